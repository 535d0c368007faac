"""``vnetdp reconcile``: where the node's stores and its live datapath disagree,
and (``--fix``) putting them back in line (SPEC §10: restart and reconcile).

What is compared: the pod records (what the network plugin created), the
IPAM store's allocations (vnetdp-ipam's), the endpoint map (the public-IP
flags against the instance metadata document: ``vnetdp.public_ips``), the
host veths (``vnd`` + 11 hex digits) and link pins, the attachments (both pod programs
on every recorded host veth, the pods' XDP pass programs when the NIC runs
XDP, the NIC's program at every hook ``nic_hooks`` names) against the build
the node runs, and the pinned builds. The records are the reference: a
veth, pin, map entry or allocation no record explains is a stray; a record
whose namespace and veth are both gone is a pod that was deleted without
its DEL.

Three steps, apart so that the comparison is a pure function tested on
fake inputs: ``observe`` reads everything into an ``Observed``,
``differences`` compares, ``repair`` fixes what can be fixed. Everything
runs with the node's GC lock held exclusively: no CNI call is in flight, so
what is seen is not a half-done ADD. Netlink work happens in the calling
thread's namespace (``--netns`` enters the node's first).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from vnetdp import defaults, naming, plugins
from vnetdp.datapath import maps as M
from vnetdp.datapath.node import nic_hooks
from vnetdp.endpoint import POD_PROGRAMS as POD_HOOKS
from vnetdp.endpoint import POD_XDP_HOOK
from vnetdp.ipam.store import Allocation
from vnetdp.network.records import PodRecord

IPv4 = ipaddress.IPv4Address
NIC_HOOKS = ("ingress", "xdp")   # every hook the NIC may carry a program of vnetdp's at
#: endpoint.check problems that a finer difference below already reports
COVERED_PROBLEMS = ("datapath has no endpoint entry", "is not attached to", "host interface")


# --- what is observed ---------------------------------------------------------------

@dataclass(frozen=True)
class Veth:
    name: str
    index: int
    mac: str


@dataclass(frozen=True)
class MapEntry:
    ifindex: int
    pod_mac: str
    host_mac: str
    flags: int = 0


@dataclass(frozen=True)
class Nic:
    name: str
    index: int
    attached: dict[str, int | None]  # NIC hook -> what vnetdp has attached there (None or absent: nothing)


@dataclass
class Observed:
    """One node's stores and live datapath, as plain data."""

    records: list[PodRecord] = field(default_factory=list)
    allocations: list[Allocation] | None = None     # None: the IPAM store could not be read
    ipam_error: str = ""
    endpoints: dict[IPv4, MapEntry] = field(default_factory=dict)
    maps_pinned: bool = True
    maps_error: str = ""                                   # the maps are pinned but cannot be opened
    veths: dict[str, Veth] = field(default_factory=dict)   # host veths (vnd + hash) by name
    pins: list[str] = field(default_factory=list)          # names in <bpffs>/links
    attachments: dict[tuple[str, str], int | None] = field(default_factory=dict)  # (veth, hook) -> prog id
    pod_xdp: dict[str, int | None] = field(default_factory=dict)                 # veth -> pod end's prog id
    nic_attach: str = "tc"
    programs: dict[str, int] = field(default_factory=dict)  # the current build's program ids by name
    build: str | None = None                                # the current build (None: nothing pinned)
    previous: str | None = None
    builds: list[str] = field(default_factory=list)
    nic: Nic | None = None
    nic_error: str = ""
    netns_alive: dict[str, bool] = field(default_factory=dict)   # record netns path -> is a netns
    problems: dict[str, list[str]] = field(default_factory=dict)  # veth -> other endpoint.check problems
    public_ips: dict[IPv4, IPv4] = field(default_factory=dict)    # addresses with a public IP (vnetdp.public_ips)


@dataclass
class Difference:
    kind: str
    subject: str
    detail: str
    repair: str | None           # what --fix does; None: it cannot be fixed here (detail says how)
    status: str = "found"        # found, fixed, failed
    error: str = ""
    record: PodRecord | None = None      # the pod concerned, if any
    hook: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail, "repair": self.repair,
                "status": self.status, **({"error": self.error} if self.error else {})}


def _host(r: PodRecord) -> str:
    return naming.host_ifname(r.container_id, r.ifname)


def _uses_store(r: PodRecord) -> bool:
    return r.ipam_type == plugins.IPAM


def _cni_owned(a: Allocation) -> bool:
    return getattr(a, "owner", "cni") == "cni"  # ipam.store.CNI; allocations from before owners: CNI


# --- the comparison (pure) ------------------------------------------------------------

def differences(o: Observed) -> list[Difference]:
    """Every way ``o``'s stores and live datapath disagree, each with its repair."""
    out: list[Difference] = []
    add = out.append
    if o.build is None:
        add(Difference("programs-not-loaded", "programs", "no build of the datapath programs is pinned",
                       "compile and pin them (as vnetdp install does)"))
    if o.maps_error:
        add(Difference("maps-unreadable", "maps", o.maps_error, None))
    keep = {_host(r) for r in o.records}
    by_address: dict[str, list[PodRecord]] = {}
    for r in o.records:
        by_address.setdefault(r.address, []).append(r)
    for address, rs in sorted(by_address.items()):
        if len(rs) > 1:
            add(Difference("address-conflict", address,
                           "held by the records of " + ", ".join(f"{r.container_id}/{r.ifname}" for r in rs),
                           None))

    # pods the records know
    for r in sorted(o.records, key=lambda r: (r.address, r.container_id)):
        name, ip = _host(r), IPv4(r.address)
        pod = f"{r.container_id[:24]}/{r.ifname}"
        veth = o.veths.get(name)
        alive = o.netns_alive.get(r.netns, False)
        if veth is None and not alive:
            repair = ("DEL: remove its datapath leftovers, release its address, remove the record"
                      if _uses_store(r) else None)
            detail = f"{pod} ({r.address}): its netns {r.netns} and host veth {name} are gone"
            if not _uses_store(r):
                detail += (f"; its address is {r.ipam_type}'s to release (a CNI DEL or GC of its network, "
                           "or the Docker driver for a Docker endpoint): left alone")
            add(Difference("pod-gone", r.address, detail, repair, record=r))
            continue
        if veth is None:
            add(Difference("veth-missing", r.address,
                           f"{pod}: host veth {name} is missing while its netns {r.netns} exists",
                           "recreate the endpoint with its recorded address and MACs", record=r))
            continue
        if not alive and r.netns:  # (a Docker endpoint names its sandbox only when it joins)
            add(Difference("netns-missing", r.address,
                           f"{pod}: netns {r.netns} is gone but host veth {name} exists", None, record=r))
        entry = o.endpoints.get(ip)
        if o.maps_pinned and not o.maps_error:
            if entry is None:
                add(Difference("map-entry-missing", r.address, f"{pod}: no endpoint map entry for {r.address}",
                               f"write it: ifindex {veth.index} ({name}), MACs from the record and veth",
                               record=r))
            else:
                wrong = []
                if entry.ifindex != veth.index:
                    wrong.append(f"ifindex {entry.ifindex}, the veth's is {veth.index}")
                if entry.host_mac != veth.mac:
                    wrong.append(f"host MAC {entry.host_mac}, the veth's is {veth.mac}")
                if r.pod_mac and entry.pod_mac != r.pod_mac:
                    wrong.append(f"pod MAC {entry.pod_mac}, the record's is {r.pod_mac}")
                if wrong:
                    add(Difference("map-entry-wrong", r.address, f"{pod}: the map entry has " + "; ".join(wrong),
                                   "rewrite it from the record and the live veth", record=r))
                public = o.public_ips.get(ip)
                if bool(entry.flags & M.EP_PUBLIC_IP) != (public is not None):
                    add(Difference("public-ip-flag", r.address,
                                   f"{pod}: the metadata document gives it the public IP {public}, but its traffic "
                                   "beyond the VNet is translated" if public else
                                   f"{pod}: the metadata document gives it no public IP, but its traffic beyond "
                                   "the VNet leaves untranslated",
                                   f"{'set' if public else 'clear'} the endpoint's public-IP flag", record=r))
        for hook, prog in POD_HOOKS.items():
            have, want = o.attachments.get((name, hook)), o.programs.get(prog)
            if have is None:
                add(Difference("program-missing", name, f"{pod}: {prog} is not attached at {hook} of {name}",
                               f"attach {prog}", record=r, hook=hook))
            elif want is not None and have != want:
                add(Difference("program-stale", name,
                               f"{pod}: {name} {hook} runs program id {have}, the current build's {prog} is {want}",
                               f"replace it in place with {prog} {want}", record=r, hook=hook))
        if o.nic_attach == "xdp" and alive:
            have, want = o.pod_xdp.get(name), o.programs.get("pod_xdp_pass")
            if have is None or (want is not None and have != want):
                add(Difference("pod-xdp-missing", name,
                               f"{pod}: the pod end lacks pod_xdp_pass, which XDP on the NIC needs to deliver",
                               "attach pod_xdp_pass to the pod end", record=r, hook="xdp"))
        for problem in o.problems.get(name, []):
            if "no route to" in problem:
                add(Difference("route-missing", r.address, f"{pod}: {problem}",
                               f"route {r.address}/32 to {name} with a permanent neighbour", record=r))
            else:
                add(Difference("endpoint-problem", r.address, f"{pod}: {problem}", None, record=r))

    # datapath objects no record explains
    for name in sorted(set(o.veths) - keep):
        add(Difference("veth-stray", name, f"host veth {name} (ifindex {o.veths[name].index}): no record",
                       "delete it with its pins and map entry"))
    recorded_addresses = {r.address for r in o.records}
    wanted = nic_hooks(o.nic_attach)  # NIC hook -> its program
    nic_pin = o.nic.name.replace(".", "~") if o.nic else None  # as Bpffs.link_pin spells it
    for pin in sorted(o.pins):
        hook, _, name = pin.partition("-")
        if naming.is_host_ifname(name) and (hook in POD_HOOKS or hook == POD_XDP_HOOK):
            if name not in keep and name not in o.veths:
                add(Difference("pin-stray", pin, f"link pin {pin}: no record, no veth", "unpin it"))
        elif hook in NIC_HOOKS and not naming.is_host_ifname(name) and (o.nic is None or name == nic_pin):
            if o.nic is not None and hook not in wanted and o.nic.attached.get(hook) is None:
                add(Difference("pin-stray", pin, f"link pin {pin}: the NIC's programs belong at "
                                                 + " and ".join(wanted), "detach and unpin it", hook=hook))
        else:
            add(Difference("pin-stray", pin, f"link pin {pin}: no NIC or pod hook of this node's",
                           "unpin it"))
    veth_indexes = {v.index: n for n, v in o.veths.items()}
    for ip, entry in sorted(o.endpoints.items()):
        if str(ip) not in recorded_addresses:
            where = veth_indexes.get(entry.ifindex, "no live veth")
            add(Difference("map-entry-stray", str(ip), f"endpoint map entry for {ip} (ifindex {entry.ifindex}, "
                                                       f"{where}): no record holds {ip}",
                           "delete it with its SNAT flows and counters"))

    # the NIC
    if o.nic_error:
        add(Difference("nic-missing", "nic", o.nic_error, None))
    elif o.nic is not None and o.build is not None:
        nic = o.nic.name
        for hook, prog in wanted.items():
            have, want = o.nic.attached.get(hook), o.programs.get(prog)
            if have is None:
                add(Difference("nic-program-missing", nic, f"{prog} is not attached at {hook} of {nic}",
                               f"attach {prog} (node configure)", hook=hook))
            elif want is not None and have != want:
                add(Difference("nic-program-stale", nic,
                               f"{nic} {hook} runs program id {have}, the current build's {prog} is {want}",
                               "replace it in place (node configure)", hook=hook))
        for hook, have in o.nic.attached.items():
            if hook not in wanted and have is not None:
                add(Difference("nic-program-stray", nic, f"{nic} {hook}: a program of vnetdp's is "
                                                         f"attached where the node settings put none",
                               "detach it", hook=hook))

    # IPAM
    if o.allocations is None:
        add(Difference("ipam-unreadable", "ipam", o.ipam_error or "the IPAM store cannot be read", None))
    else:
        # Only CNI attachments' allocations: a Docker endpoint's (owner "docker") are the Docker
        # driver's to give and take, whatever state they are in.
        held = {(a.container_id, a.ifname): a for a in o.allocations if _cni_owned(a)}
        records = {(r.container_id, r.ifname): r for r in o.records}
        taken = {a.address: a for a in o.allocations}
        # An allocation no record explains is vnetdp's stray when its network is one of vnetdp's
        # pods'; any other may belong to another plugin using vnetdp-ipam (or, with the Docker
        # driver, to a Docker endpoint), whose addresses reconcile never takes away.
        networks = {r.network for r in o.records}
        for key, a in sorted(held.items(), key=lambda kv: kv[1].address):
            if key not in records:
                ours = a.network in networks if a.network else bool(networks)
                add(Difference("allocation-stray", a.address,
                               f"{a.address} is allocated to {a.container_id[:24]}/{a.ifname}, which has no record"
                               + ("" if ours else f"; network {a.network or '(unnamed)'} has no vnetdp pod here: "
                                                   "another plugin may hold it (a CNI GC of that network "
                                                   "releases it if stale)"),
                               "release it" if ours else None))
        for key, r in sorted(records.items(), key=lambda kv: kv[1].address):
            if not _uses_store(r):
                continue
            a = held.get(key)
            if a is None:
                other = taken.get(r.address)
                if other is None:
                    add(Difference("allocation-missing", r.address,
                                   f"the record of {r.container_id[:24]}/{r.ifname} holds {r.address}, IPAM has "
                                   "no allocation for it", "allocate the recorded address to it again", record=r))
                else:
                    add(Difference("allocation-conflict", r.address,
                                   f"the record of {r.container_id[:24]}/{r.ifname} holds {r.address}, which IPAM "
                                   f"gave to {other.container_id[:24]}/{other.ifname}", None, record=r))
            elif a.address != r.address:
                add(Difference("allocation-conflict", r.address,
                               f"the record of {r.container_id[:24]}/{r.ifname} holds {r.address}, IPAM gave it "
                               f"{a.address}", None, record=r))

    # builds
    for build in o.builds:
        if build not in (o.build, o.previous):
            add(Difference("build-stray", build, f"pinned build {build} is neither the current ({o.build}) nor "
                                                 f"the previous one ({o.previous})", "unpin it"))
    return out


# --- reading the node -------------------------------------------------------------------

def observe(node, state_dir: str) -> Observed:
    """Read the node (its stores, pins and the calling thread's namespace)."""
    from pyroute2 import IPRoute

    from vnetdp import endpoint, netns, public_ips
    from vnetdp.datapath import attach, bpffs
    from vnetdp.ipam.errors import IpamError
    from vnetdp.ipam.store import Store
    from vnetdp.network.records import PodRecords

    o = Observed()
    o.records = PodRecords(state_dir).all()
    try:
        with Store(state_dir).transaction() as state:
            o.allocations = list(state.allocations)
    except IpamError as e:
        o.ipam_error = f"{e}" + (f" ({e.hint})" if getattr(e, "hint", "") else "")
    o.nic_attach = node.settings.nic_attach
    o.builds = node.bpffs.builds()
    o.previous = node.bpffs.marker(bpffs.PREVIOUS)
    marked = node.bpffs.marker(bpffs.CURRENT)
    o.build = marked if marked and node.programs.is_pinned(marked) else None
    if o.build is None and not marked and len(o.builds) == 1 and node.programs.is_pinned(o.builds[0]):
        o.build = o.builds[0]  # pinned before markers existed
    o.programs = node.programs.prog_ids(o.build) if o.build else {}
    o.maps_pinned = os.path.isdir(node.bpffs.maps_dir) and bool(os.listdir(node.bpffs.maps_dir))
    if o.maps_pinned:
        try:
            with node.maps().open_all() as m:
                o.endpoints = {ip: MapEntry(ep.ifindex, ep.pod_mac, ep.host_mac, ep.flags)
                               for ip, ep in m.endpoints().items()}
        except Exception as e:  # a map missing or of another layout: say so, compare the rest
            o.maps_error = f"the maps in {node.bpffs.maps_dir} cannot be opened: {e}"
    o.public_ips = public_ips.current(node.settings, max_age=0)   # the document now
    with contextlib.suppress(FileNotFoundError):
        o.pins = sorted(p for p in os.listdir(node.bpffs.links_dir))
    for r in o.records:
        try:
            os.close(netns.open_pod_ns(r.netns))
            o.netns_alive[r.netns] = True
        except (netns.NetnsNotFound, netns.NotAPodNetns):
            o.netns_alive[r.netns] = False
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if naming.is_host_ifname(name):
                o.veths[name] = Veth(name, link["index"], link.get_attr("IFLA_ADDRESS"))
        for name, veth in o.veths.items():
            for hook in POD_HOOKS:
                found = attach.attached(veth.index, hook, node.bpffs.link_pin(name, hook), ipr)
                o.attachments[(name, hook)] = found.prog_id if found else None
            if o.nic_attach == "xdp":
                found = attach.pinned_link(node.bpffs.link_pin(name, POD_XDP_HOOK))
                o.pod_xdp[name] = found.prog_id if found else None
        try:
            nic = node.nic(ipr)
        except Exception as e:  # NodeSetupError: no such NIC, no default route
            o.nic_error = str(e)
        else:
            found = {hook: attach.attached(nic.index, hook, node.bpffs.link_pin(nic.name, hook), ipr)
                     for hook in NIC_HOOKS}
            o.nic = Nic(nic.name, nic.index, {hook: a.prog_id if a else None for hook, a in found.items()})
    if o.build is not None and o.maps_pinned and not o.maps_error:
        for r in o.records:
            name = _host(r)
            if name in o.veths and o.netns_alive.get(r.netns):
                try:
                    found = endpoint.check(node, r.container_id, r.ifname, r.netns, IPv4(r.address))
                except Exception as e:  # a pod that vanishes under us
                    found = [f"could not be checked: {e}"]
                o.problems[name] = [p for p in found if not any(c in p for c in COVERED_PROBLEMS)]
    return o


# --- repairing ----------------------------------------------------------------------------

def _pod_mac(r: PodRecord) -> str | None:
    """The pod end's MAC as the pod's namespace shows it."""
    from pyroute2 import IPRoute

    from vnetdp import links, netns

    try:
        with netns.enter(r.netns), IPRoute() as ipr:
            return links.get_link(ipr, r.ifname).mac
    except (netns.NetnsNotFound, links.LinkNotFound):
        return None


def repair(node, state_dir: str, found: list[Difference]) -> None:
    """Fix every difference that has a repair, in an order where each step
    finds what it needs (strays go before entries are rewritten); each gets
    status "fixed" or "failed" (with the error)."""
    from pyroute2 import IPRoute

    from vnetdp import endpoint, links, netns, public_ips
    from vnetdp.datapath import attach
    from vnetdp.ipam.store import Store
    from vnetdp.network.records import PodRecords

    records = PodRecords(state_dir)

    def do(kinds: tuple[str, ...], action) -> None:
        for d in found:
            if d.kind in kinds and d.repair and d.status == "found":
                try:
                    action(d)
                    d.status = "fixed"
                except Exception as e:  # one failure must not stop the other repairs
                    d.status, d.error = "failed", f"{type(e).__name__}: {e}"

    def load(d: Difference) -> None:
        node.programs.load()

    def pod_gone(d: Difference) -> None:
        r = d.record
        endpoint.delete(node, r.container_id, r.ifname, IPv4(r.address))
        with Store(state_dir).transaction() as state:
            state.release(r.container_id, r.ifname)
        records.remove(r.container_id, r.ifname)

    def strays(d: Difference) -> None:
        if d.kind == "pin-stray" and d.hook:  # a NIC pin at the wrong hook: detach what it attaches
            with IPRoute() as ipr:  # the pin spells the NIC's dots as "~" (Bpffs.link_pin)
                index = links.get_link(ipr, d.subject.partition("-")[2].replace("~", ".")).index
            attach.detach(index, d.hook, os.path.join(node.bpffs.links_dir, d.subject))
        elif d.kind == "pin-stray":
            attach.detach(None, d.subject.partition("-")[0], os.path.join(node.bpffs.links_dir, d.subject))
        else:
            endpoint.delete(node, "", "", host_name=d.subject)

    def map_stray(d: Difference) -> None:
        with node.maps() as m:
            ep = m.endpoint(d.subject)
        if ep is not None:  # a live veth's counters stay; a gone one's go with the entry
            live = any(v.index == ep.ifindex for v in _live_veths())
            endpoint.forget(node, IPv4(d.subject), None if live else ep.ifindex)

    def recreate(d: Difference) -> None:
        r = d.record
        macs = (r.host_mac, r.pod_mac) if r.pod_mac and r.host_mac else None
        info = endpoint.add(node, r.container_id, r.netns, r.ifname, IPv4(r.address), macs=macs)
        if not r.pod_mac:
            records.save(dataclasses.replace(r, host_mac=info.host_mac, pod_mac=info.pod_mac))

    def write_entry(d: Difference) -> None:
        r = d.record
        with IPRoute() as ipr:
            veth = links.get_link(ipr, _host(r))
        with node.maps() as m:
            old = m.endpoint(r.address)
            pod_mac = r.pod_mac or (old.pod_mac if old else None) or _pod_mac(r)
            if not pod_mac:
                raise RuntimeError(f"the pod MAC of {r.address} is neither recorded nor readable in {r.netns}")
            flags = old.flags if old is not None else public_ips.flag(node.settings, IPv4(r.address))
            if old is None and m.bandwidth(r.address) is not None:
                flags |= M.EP_BANDWIDTH  # its rate limits are still in their map
            m.put_endpoint(r.address, M.Endpoint(veth.index, pod_mac, veth.mac, flags))

    def public_ip(d: Difference) -> None:
        want = public_ips.flag(node.settings, IPv4(d.subject))  # the document as it is now
        with node.maps() as m:
            m.update_endpoint_flags(d.subject, add=want, remove=M.EP_PUBLIC_IP & ~want)

    def route(d: Difference) -> None:
        r = d.record
        with IPRoute() as ipr:
            veth = links.get_link(ipr, _host(r))
            links.route_host(ipr, IPv4(r.address), veth, r.pod_mac or _pod_mac(r))

    def program(d: Difference) -> None:
        prog = POD_HOOKS[d.hook]
        fd = node.programs.prog_fd(prog)
        try:
            with IPRoute() as ipr:
                veth = links.get_link(ipr, d.subject)
                attach.attach(fd, veth.index, d.hook, node.bpffs.link_pin(d.subject, d.hook),
                              node.settings.pod_attach_mode, ipr)
        finally:
            os.close(fd)

    def pod_xdp(d: Difference) -> None:
        r = d.record
        fd = node.programs.prog_fd("pod_xdp_pass")
        try:
            with netns.enter(r.netns), IPRoute() as ipr:
                index = links.get_link(ipr, r.ifname).index
                attach.attach(fd, index, "xdp", node.bpffs.link_pin(d.subject, POD_XDP_HOOK))
        finally:
            os.close(fd)

    def nic(d: Difference) -> None:
        if d.kind == "nic-program-stray":
            with IPRoute() as ipr:
                index = links.get_link(ipr, d.subject).index
            attach.detach(index, d.hook, node.bpffs.link_pin(d.subject, d.hook))
        else:
            node.configure()

    def ipam(d: Difference) -> None:
        with Store(state_dir).transaction() as state:
            if d.kind == "allocation-stray":
                state.allocations = [a for a in state.allocations if a.address != d.subject or not _cni_owned(a)]
            else:
                r = d.record
                if any(a.address == r.address for a in state.allocations):
                    raise RuntimeError(f"{r.address} was allocated meanwhile")
                state.allocations.append(Allocation(r.container_id, r.ifname, r.address, r.subnet, r.gateway,
                                                    time.time(), r.network))

    def builds(d: Difference) -> None:
        node.programs.prune()

    do(("programs-not-loaded",), load)
    do(("pod-gone",), pod_gone)
    do(("veth-stray", "pin-stray"), strays)
    do(("map-entry-stray",), map_stray)
    do(("veth-missing",), recreate)
    do(("map-entry-missing", "map-entry-wrong"), write_entry)
    do(("public-ip-flag",), public_ip)
    do(("route-missing",), route)
    do(("program-missing", "program-stale"), program)
    do(("pod-xdp-missing",), pod_xdp)
    do(("nic-program-missing", "nic-program-stale", "nic-program-stray"), nic)
    do(("allocation-stray", "allocation-missing"), ipam)
    do(("build-stray",), builds)


def _live_veths() -> list[Veth]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [Veth(n, link["index"], link.get_attr("IFLA_ADDRESS")) for link in ipr.get_links()
                if naming.is_host_ifname(n := link.get_attr("IFLA_IFNAME"))]


# --- the command ----------------------------------------------------------------------------

@dataclass
class Result:
    differences: list[Difference]
    remaining: list[Difference] | None = None   # after --fix: what a second look still finds
    fixed: bool = False

    @property
    def clean(self) -> bool:
        """Nothing left to do: no difference found, or every one fixed and a second look clean."""
        return not (self.remaining if self.fixed else self.differences)

    def as_dict(self) -> dict:
        counts = Counter(d.kind for d in self.differences)
        d = {"clean": self.clean, "fix": self.fixed, "counts": dict(sorted(counts.items())),
             "differences": [x.as_dict() for x in self.differences]}
        if self.remaining is not None:
            d["remaining"] = [x.as_dict() for x in self.remaining]
        return d


def reconcile(state_dir: str, bpffs_dir: str, fix: bool = False) -> Result:
    """Compare (and with ``fix``, repair and compare again) the node whose
    state and pins are at ``state_dir`` and ``bpffs_dir``, in the calling
    thread's network namespace."""
    from vnetdp.datapath.node import node_for
    from vnetdp.locks import WAIT_S, flocked

    node = node_for(state_dir, bpffs_dir)
    with flocked(os.path.join(state_dir, defaults.GC_LOCK), exclusive=True, timeout=WAIT_S):
        found = differences(observe(node, state_dir))
        result = Result(found)
        if fix and found:
            repair(node, state_dir, found)
            node.programs.refresh()
            result.fixed = True
            result.remaining = differences(observe(node, state_dir))
    return result


def render(result: Result) -> str:
    """A table of the differences, and what became of them."""
    if not result.differences:
        return "clean: the records, IPAM, the endpoint map, the host veths and the attachments agree"
    rows = [(d.kind, d.subject, d.detail,
             d.status if result.fixed and d.repair else ("can fix: " + d.repair if d.repair else "manual"))
            for d in result.differences]
    widths = [max(len(r[i]) for r in rows + [("kind", "subject", "", "")]) for i in range(2)]
    lines = [f"{'kind':<{widths[0]}}  {'subject':<{widths[1]}}  detail -> action"]
    for (kind, subject, detail, action), d in zip(rows, result.differences):
        lines.append(f"{kind:<{widths[0]}}  {subject:<{widths[1]}}  {detail} -> {action}"
                     + (f" ({d.error})" if d.error else ""))
    if result.fixed:
        left = result.remaining or []
        lines.append(f"{sum(d.status == 'fixed' for d in result.differences)} fixed; "
                     + ("a second look finds the node clean" if not left else
                        f"{len(left)} remain: " + "; ".join(f"{d.kind} {d.subject}" for d in left)))
    else:
        fixable = sum(1 for d in result.differences if d.repair)
        lines.append(f"{len(result.differences)} differences, {fixable} fixable with --fix")
    return "\n".join(lines)
