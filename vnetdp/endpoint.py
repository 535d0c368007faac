"""The plumbing of one pod endpoint, shared by the CNI plugin and the lab.

Host side: a veth end named ``vnd`` + 11 hex digits of a hash of (container
ID, ifname), up, with a /32 route and permanent neighbour for the pod address,
``from_container`` attached at tc ingress and ``to_container`` at tc egress. Pod side: the address as /32,
``169.254.1.1`` as an on-link gateway with a permanent neighbour entry for the
host end's MAC, a default route through it. The datapath's endpoint map gets
the pod's address, MACs and host ifindex.

``add`` is a transaction: any failure undoes what it did; it speaks raw
netlink (``vnetdp.rtnl``: a round trip or two per step, no event loop).
``delete`` succeeds when any part is already gone. Both must run in the node's
namespace.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute

from vnetdp import links, netns, public_ips, rtnl, shaping
from vnetdp.naming import host_ifname, is_host_ifname
from vnetdp.datapath import attach, snat
from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.node import Node
from vnetdp.policy import enforce

POD_GATEWAY = ipaddress.IPv4Address("169.254.1.1")
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")
Phase = Callable[[str], contextlib.AbstractContextManager]  # times a named step
POD_XDP_HOOK = "podxdp"  # pin name part of the pod end's XDP link
POD_PROGRAMS = {"ingress": "from_container", "egress": "to_container"}
#: qdiscs a host veth may carry: its default, vnetdp's hooks, the shaper of a
#: pod's ingress rate; anything else is bypassed by the datapath.
OWN_QDISCS = {"noqueue", "clsact", shaping.KIND}


@dataclass(frozen=True)
class EndpointInfo:
    container_id: str
    ifname: str
    netns: str
    address: ipaddress.IPv4Address
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    mtu: int


def _setup_pod_side(rt: rtnl.Rtnl, ifname: str, address: ipaddress.IPv4Address, host_mac: str) -> str:
    """Configure the pod end, with its MTU since its creation (``rt``: a
    socket in the pod's namespace): lo and the pod end up, the address, the on-link gateway
    with its permanent neighbour entry, the default route; returns the pod
    end's MAC. Two round trips."""
    _, _, (found,) = rt.batch(rtnl.link_up("lo"), rtnl.link_up(ifname), rtnl.link_get(ifname))
    pod = rtnl.parse_link(found)
    rt.batch(rtnl.addr_add(pod.index, address, 32),
             rtnl.route_replace(ipaddress.IPv4Network(f"{POD_GATEWAY}/32"), pod.index, scope=rtnl.SCOPE_LINK),
             rtnl.neigh_replace(pod.index, POD_GATEWAY, host_mac),
             rtnl.route_replace(DEFAULT_ROUTE, pod.index, gateway=POD_GATEWAY))
    return pod.mac


def _shape_pod_side(ifname: str, bandwidth: M.Bandwidth) -> None:
    """The pod's egress rate on its own end (inside the pod's namespace),
    where its sockets feel the queue."""
    with IPRoute() as ipr:
        shaping.shape(ipr, links.get_link(ipr, ifname).index, bandwidth.egress_bytes_per_s,
                      bandwidth.egress_burst_bytes)


def _untimed(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def add(node: Node, container_id: str, netns_path: str, ifname: str,
        address: ipaddress.IPv4Address, mtu: int | None = None,
        macs: tuple[str, str] | None = None, bandwidth: M.Bandwidth | None = None,
        phase: Phase = _untimed) -> EndpointInfo:
    """Create the endpoint (``macs``: the host end's and the pod's MAC, to
    rebuild one as it was; ``bandwidth``: its rate limits, in force before its
    first packet; ``phase(name)`` times the steps: node, veth, addresses,
    attach); on any failure nothing of it remains."""
    name = host_ifname(container_id, ifname)
    with rtnl.Rtnl() as rt, contextlib.ExitStack() as fds, contextlib.ExitStack() as undo:
        with phase("node"):
            mtu = mtu or node.ensure(rt).nic.mtu
        with phase("veth"):
            pod_ns = netns.open_pod_ns(netns_path)
            fds.callback(os.close, pod_ns)
            host = rtnl.create_veth(rt, name, ifname, pod_ns, mtu, macs)  # over a leftover of an interrupted ADD
            undo.callback(rtnl.delete_link, rt, name)
        with phase("addresses"), netns.enter_fd(pod_ns, netns_path):
            with rtnl.Rtnl() as inside:
                pod_mac = _setup_pod_side(inside, ifname, address, host.mac)
            if bandwidth is not None and bandwidth.egress_bytes_per_s:
                _shape_pod_side(ifname, bandwidth)
        if node.settings.nic_attach == "xdp":  # before the map entry sends XDP-redirected frames in
            with phase("attach"), netns.enter_fd(pod_ns, netns_path):
                undo.callback(attach.detach, None, "xdp", node.bpffs.link_pin(name, POD_XDP_HOOK))
                attach_pod_xdp(node, ifname, name)
        add_host_side(node, None, host, address, pod_mac, undo, bandwidth, phase)
        undo.pop_all()  # success: keep everything
        return EndpointInfo(container_id, ifname, netns_path, address, name, host.index,
                            host.mac, pod_mac, mtu)


def add_host_side(node: Node, ipr: IPRoute | None, host: links.Link, address: ipaddress.IPv4Address, pod_mac: str,
                  undo: contextlib.ExitStack, bandwidth: M.Bandwidth | None = None,
                  phase: Phase = _untimed) -> None:
    """The host half of an endpoint whose veth exists (``host``: its host end,
    just created; ``pod_mac``: the other end's MAC): the /32 route and
    neighbour, the map entries (flagged when the address has a public IP:
    ``vnetdp.public_ips``; its node policy's rule set, ``vnetdp.policy``),
    both programs attached; each step's undo
    pushed on ``undo`` (``ipr``: the caller's pyroute2 socket for the
    ingress shaper, if it has one). ``add`` and the Docker driver (whose other end Docker
    moves into the container itself) share it."""
    with phase("addresses"), rtnl.Rtnl() as rt:
        rtnl.route_host(rt, address, host, pod_mac)
        if bandwidth is not None and bandwidth.ingress_bytes_per_s:
            with attach.socket_or_own(ipr) as own:  # pyroute2 only for a pod that needs a shaper
                shaping.shape(own, host.index, bandwidth.ingress_bytes_per_s, bandwidth.ingress_burst_bytes)
        flags = public_ips.flag(node.settings, address)  # before its first packet leaves
        with node.maps() as m:
            undo.callback(forget, node, address, host.index)
            if bandwidth is not None and bandwidth.limited:
                m.put_bandwidth(address, bandwidth)
            enforce.policy_for_endpoint(node.settings.state_dir, m, address)  # in force from its first packet
            m.put_endpoint(address, M.Endpoint(host.index, pod_mac, host.mac,
                                               flags | (M.EP_BANDWIDTH if bandwidth and bandwidth.limited else 0)))
    with phase("attach"), rtnl.Rtnl() as rt, contextlib.ExitStack() as fds:
        pins = {hook: node.bpffs.link_pin(host.name, hook) for hook in POD_PROGRAMS}
        for hook, pin in pins.items():
            undo.callback(attach.detach, host.index, hook, pin)
        progs = {}
        for hook, prog in POD_PROGRAMS.items():
            progs[hook] = node.programs.prog_fd(prog)
            fds.callback(os.close, progs[hook])
        attach.attach_new(rt, host.index, progs, pins, node.settings.pod_attach_mode)


def attach_pod_xdp(node: Node, ifname: str, host_name: str) -> None:
    """With XDP on the NIC, the pod end needs an XDP program of its own to
    receive XDP-redirected frames (SPEC §9). Runs inside the pod namespace;
    the link dies with the pod's veth, its pin goes with ``delete``."""
    fd = node.programs.prog_fd("pod_xdp_pass")
    try:
        with rtnl.Rtnl() as rt:
            index = rtnl.get_link(rt, ifname).index
        attach.attach(fd, index, "xdp", node.bpffs.link_pin(host_name, POD_XDP_HOOK))
    finally:
        os.close(fd)


def _same_rates(a: M.Bandwidth | None, b: M.Bandwidth | None) -> bool:
    rates = lambda bw: (bw.egress_bytes_per_s, bw.ingress_bytes_per_s) if bw else (0, 0)  # noqa: E731
    return rates(a) == rates(b)


def forget(node: Node, address: ipaddress.IPv4Address | None, ifindex: int | None) -> None:
    """Remove the map entry for ``address`` if it still belongs to ``ifindex``
    (any, when None), and everything else the datapath keeps for the address
    (rates, SNAT flows, rule set): before the address can go to another pod,
    which must never receive this one's traffic or limits. Then the counters
    of ``ifindex``, when given."""
    with node.maps() as m:
        if address is not None:
            ep = m.endpoint(address)
            if ep is None or ifindex is None or ep.ifindex == ifindex:
                m.delete_endpoint(address)
                m.delete_bandwidth(address)
                snat.purge(m, address)
                enforce.forget_endpoint(m, address)
        if ifindex is not None:
            m.forget_metrics(ifindex)


def delete(node: Node, container_id: str, ifname: str,
           address: ipaddress.IPv4Address | None = None, host_name: str | None = None) -> None:
    """Remove the endpoint (named by container ID and ifname, or by its host
    interface name); whatever is already gone counts as removed."""
    name = host_name or host_ifname(container_id, ifname)
    with rtnl.Rtnl() as rt:
        try:
            ifindex: int | None = rtnl.get_link(rt, name).index
        except rtnl.LinkNotFound:
            ifindex = None
        for hook in POD_PROGRAMS:  # pins only: deleting the veth removes clsact filters
            attach.detach(None, hook, node.bpffs.link_pin(name, hook))
        rtnl.delete_link(rt, name)
    attach.detach(None, "xdp", node.bpffs.link_pin(name, POD_XDP_HOOK))
    if os.path.isdir(node.bpffs.maps_dir):
        if address is None and ifindex is not None:
            with node.maps() as m:
                address = next((ip for ip, ep in m.endpoints().items() if ep.ifindex == ifindex), None)
        forget(node, address, ifindex)


def remove_strays(node: Node, keep: set[str]) -> list[str]:
    """Remove host veths, link pins and endpoint map entries that belong to no
    endpoint in ``keep`` (host interface names): what an interrupted ADD or DEL
    can leave. Returns the host interface names removed."""
    with IPRoute() as ipr:
        present = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
    names = {n for n in present if is_host_ifname(n)}
    if os.path.isdir(node.bpffs.links_dir):
        for pin in os.listdir(node.bpffs.links_dir):
            hook, _, name = pin.partition("-")
            if (hook in POD_PROGRAMS or hook == POD_XDP_HOOK) and is_host_ifname(name):
                names.add(name)
    strays = sorted(names - keep)
    for name in strays:
        delete(node, "", "", host_name=name)
    if os.path.isdir(node.bpffs.maps_dir):
        with node.maps() as m:
            gone = [(address, ep.ifindex) for address, ep in m.endpoints().items()
                    if ep.ifindex not in present.values()]
        for address, ifindex in gone:
            forget(node, address, ifindex)
    return strays


def check_host_side(node: Node, ipr: IPRoute, name: str, address: ipaddress.IPv4Address,
                    bandwidth: M.Bandwidth | None = None) -> list[str]:
    """What is wrong with the host side of a live endpoint (host veth
    ``name``): empty when veth, /32 route, qdiscs, map entries (``bandwidth``,
    when given: the limits it must have) and attached programs are all as
    ``add_host_side`` left them."""
    try:
        host = links.get_link(ipr, name)
    except links.LinkNotFound:
        return [f"host interface {name} is missing"]
    problems: list[str] = []
    routes = ipr.route("get", dst=str(address))
    if not routes or routes[0].get_attr("RTA_OIF") != host.index:
        problems.append(f"no route to {address} via {name}")
    foreign = sorted({q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=host.index)} - OWN_QDISCS)
    if foreign:
        problems.append(f"{name} has qdiscs {', '.join(foreign)} that vnetdp's datapath bypasses "
                        "(a chained bandwidth plugin?): use capabilities.bandwidth instead")
    with node.maps() as m:
        ep = m.endpoint(address)
        limits = m.bandwidth(address) if ep is not None and ep.flags & M.EP_BANDWIDTH else None
    if ep is None or ep.ifindex != host.index:
        problems.append(f"datapath has no endpoint entry for {address} on {name}")
    if bandwidth is not None and ep is not None and not _same_rates(limits, bandwidth):
        problems.append(f"bandwidth limits are {limits or 'none'} in the datapath, {bandwidth} asked")
    problems += shaping.problems(ipr, host.index, name, limits.ingress_bytes_per_s if limits else 0, "ingress")
    for hook, prog in POD_PROGRAMS.items():
        fd = node.programs.prog_fd(prog)
        try:
            current = attach.attached(host.index, hook, node.bpffs.link_pin(name, hook), ipr)
            if current is None or current.prog_id != syscall.prog_id(fd):
                problems.append(f"{prog} is not attached to {name}")
        finally:
            os.close(fd)
    return problems


def check(node: Node, container_id: str, ifname: str, netns_path: str,
          address: ipaddress.IPv4Address, bandwidth: M.Bandwidth | None = None) -> list[str]:
    """What is wrong with a live endpoint: empty when its host side
    (``check_host_side``) and the pod's address, MAC and default route are
    all as ``add`` left them."""
    name = host_ifname(container_id, ifname)
    with IPRoute() as ipr:
        problems = check_host_side(node, ipr, name, address, bandwidth)
    if problems[:1] == [f"host interface {name} is missing"]:
        return problems
    with node.maps() as m:
        ep = m.endpoint(address)
        limits = m.bandwidth(address) if ep is not None and ep.flags & M.EP_BANDWIDTH else None
    try:
        with netns.enter(netns_path), IPRoute() as ipr:
            pod = links.get_link(ipr, ifname)
            problems += shaping.problems(ipr, pod.index, ifname, limits.egress_bytes_per_s if limits else 0,
                                         "egress")
            if address not in [a.ip for a in links.ipv4_interfaces(ipr, pod.index)]:
                problems.append(f"{ifname} in {netns_path} lacks {address}")
            if ep is not None and ep.pod_mac != pod.mac:
                problems.append(f"{ifname} MAC {pod.mac} differs from the datapath's {ep.pod_mac}")
            if not ipr.get_default_routes(family=2):
                problems.append(f"no default route in {netns_path}")
    except (netns.NetnsNotFound, links.LinkNotFound) as e:
        problems.append(str(e))
    return problems
