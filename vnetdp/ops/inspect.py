"""Facts about one node, read from its pins (bpffs paths) and stores (the state
directory), never from the agent: the settings file, the pinned build, the
NIC and pod attachments, the IPAM pools, the SNAT table's fill, the pods
with their records and counters. Everything comes back as plain JSON-able
dicts; ``render`` makes tables of them.

Netlink and attachment queries run in the calling thread's network
namespace: callers inspecting a lab VM enter it first (``vnetdp.netns``).
Pins are paths, readable from anywhere.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vnetdp import defaults, naming
from vnetdp.agent import wire
from vnetdp.datapath import layouts as L
from vnetdp.datapath import syscall
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.reasons import DIRECTIONS, describe

#: Above this share of the SNAT table in use, the node is unhealthy: new
#: flows start to be dropped (DROP_SNAT_TABLE_FULL) as it fills.
SNAT_FULL = 0.9
AGENT_TIMEOUT_S = 2.0
POD_HOOKS = ("ingress", "egress")   # from_container, to_container on the host veth
NIC_HOOKS = ("ingress", "xdp")


@dataclass(frozen=True)
class NodeDirs:
    """Where one node keeps its state and its pins."""

    state_dir: str
    bpffs_dir: str

    @property
    def bpffs(self) -> Bpffs:
        return Bpffs(self.bpffs_dir)


class NotPinned(Exception):
    """The node's maps are not pinned (no install, or no pod yet)."""


def owner_of(record) -> str:
    """Who made a pod record: the Docker driver's networks are ``docker:<id>``."""
    return "docker" if record.network.startswith("docker:") else "cni"


@contextlib.contextmanager
def open_maps(dirs: NodeDirs) -> Iterator:
    """The node's pinned maps; NotPinned when there are none."""
    from vnetdp.datapath.maps import Maps

    m = Maps(dirs.bpffs.maps_dir)
    if not m.is_pinned(Maps._endpoints):
        raise NotPinned(f"no maps pinned in {dirs.bpffs.maps_dir} (vnetdp install pins them)")
    with m.open_all():
        yield m


def link_names() -> dict[int, str]:
    """ifindex -> name of every link in this namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()}


# --- sections of `vnetdp status` ------------------------------------------------------------
def settings(dirs: NodeDirs) -> dict[str, Any]:
    """The node's settings by config name, as the settings file holds them (defaults filled in)."""
    from vnetdp.datapath.settings import FIELDS, NodeSettingsFile

    loaded = NodeSettingsFile(dirs.state_dir).load()
    return {name: list(loaded[f.attribute]) if isinstance(loaded[f.attribute], tuple) else loaded[f.attribute]
            for name, f in FIELDS.items()}


def _prog_id(pin: str) -> int | None:
    try:
        fd = syscall.obj_get(pin)
    except syscall.BpfError:
        return None
    try:
        return syscall.prog_id(fd)
    finally:
        os.close(fd)


def programs(dirs: NodeDirs) -> dict[str, Any]:
    """The build the node runs (its progs directory name; None when it is not
    pinned whole), every build pinned, the build of the sources here, and
    the running build's program ids."""
    from vnetdp.datapath.loader import PROGRAMS, Programs, build_id

    progs = Programs(dirs.bpffs, dirs.state_dir)
    build = progs.build if progs.is_loaded() else None
    ids = {name: _prog_id(progs.prog_pin(name)) for name in PROGRAMS} if build else {}
    source = getattr(progs, "source_build", None) or build_id(())
    return {"build": build, "builds": dirs.bpffs.builds(), "this_code": source, "programs": ids}


def _attachment(ifindex: int, hook: str, pin: str, ipr) -> dict | None:
    from vnetdp.datapath import attach

    found = attach.attached(ifindex, hook, pin, ipr)
    return None if found is None else {"hook": found.hook, "mechanism": found.mechanism, "prog_id": found.prog_id}


def nic(dirs: NodeDirs, node, names: dict[int, str], ids: dict[str, int | None]) -> dict[str, Any]:
    """The NIC the datapath is configured for (``node``: the node map's
    entry, None before the first ADD) and what vnetdp attached to it."""
    from pyroute2 import IPRoute

    if node is None:
        return {"name": None, "ifindex": None, "attachments": []}
    name = names.get(node.nic_ifindex)
    by_id = {prog_id: prog for prog, prog_id in ids.items() if prog_id}
    found = []
    if name is not None:
        with IPRoute() as ipr:
            for hook in NIC_HOOKS:
                a = _attachment(node.nic_ifindex, hook, dirs.bpffs.link_pin(name, hook), ipr)
                if a is not None:
                    found.append({**a, "program": by_id.get(a["prog_id"])})
    return {"name": name, "ifindex": node.nic_ifindex, "mac": node.nic_mac, "primary_ip": str(node.primary_ip),
            "attachments": found}


def pod_attachments(dirs: NodeDirs, names: dict[int, str]) -> dict[str, Any]:
    """Host veths (``vnd`` + hash) and how many carry both pod programs."""
    from pyroute2 import IPRoute

    veths = {index: name for index, name in names.items() if name and naming.is_host_ifname(name)}
    missing = []
    with IPRoute() as ipr:
        for index, name in sorted(veths.items(), key=lambda x: x[1]):
            hooks = [h for h in POD_HOOKS if _attachment(index, h, dirs.bpffs.link_pin(name, h), ipr) is None]
            if hooks:
                missing.append({"host_veth": name, "missing": hooks})
    return {"host_veths": len(veths), "attached": len(veths) - len(missing), "missing": missing}


def agent(dirs: NodeDirs, timeout: float = AGENT_TIMEOUT_S) -> dict[str, Any]:
    """Whether the node agent answers a VERSION call on its socket."""
    path = defaults.agent_socket(dirs.state_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(wire.encode_request("vnetdp", {"CNI_COMMAND": "VERSION"}, b"{}"))
        s.shutdown(socket.SHUT_WR)
        rc, out, err = wire.decode_reply(wire.recv_all(s, 1 << 20))
        alive, detail = rc == 0, "" if rc == 0 else f"VERSION failed (exit {rc}): {err.decode(errors='replace')}"
    except (OSError, ValueError) as e:
        alive, detail = False, f"{path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
    finally:
        s.close()
    return {"socket": path, "alive": alive, "detail": detail}


def pools(dirs: NodeDirs) -> list[dict[str, Any]]:
    """Size, used and free addresses per subnet, from the IPAM store."""
    from vnetdp.ipam.store import Store

    if not os.path.isdir(dirs.state_dir):
        raise FileNotFoundError(errno.ENOENT, "no state directory", dirs.state_dir)
    with Store(dirs.state_dir).transaction() as state:
        used = {a.address for a in state.allocations}
        return [{"subnet": p["subnet"], "gateway": p.get("gateway", ""), "size": len(p["addresses"]),
                 "used": sum(1 for a in p["addresses"] if a in used),
                 "free": sum(1 for a in p["addresses"] if a not in used)} for p in state.pools]


def snat(dirs: NodeDirs) -> dict[str, Any]:
    """Entries in the SNAT table (two per flow) and its capacity."""
    fd = syscall.obj_get(os.path.join(dirs.bpffs.maps_dir, "snat"))
    try:
        capacity = syscall.obj_info(fd, syscall.MapInfo()).max_entries
        chunk = 4096
        keys = L.ffi().new("struct vnd_snat_key[]", chunk)
        values = L.ffi().new("struct vnd_snat_val[]", chunk)
        entries = sum(syscall.map_lookup_batch(fd, keys, values))
    finally:
        os.close(fd)
    return {"entries": entries, "capacity": capacity, "fill": round(entries / capacity, 4) if capacity else 0.0}


def _section(problems: list[str], what: str, gather, *args) -> Any:
    """``gather(*args)``, or {"error": ...} with a problem noted."""
    try:
        return gather(*args)
    except Exception as e:  # each section stands alone: one failing shows as a problem
        problems.append(f"{what}: {e}")
        return {"error": str(e)}


def status(dirs: NodeDirs) -> dict[str, Any]:
    """Everything ``vnetdp status`` shows, with a health verdict."""
    problems: list[str] = []
    warnings: list[str] = []
    out: dict[str, Any] = {"state_dir": dirs.state_dir, "bpffs_dir": dirs.bpffs_dir}
    out["settings"] = _section(problems, "node settings", settings, dirs)
    progs = out["programs"] = _section(problems, "programs", programs, dirs)
    if "error" not in progs:
        if progs["build"] is None:
            problems.append(f"datapath programs are not pinned in {dirs.bpffs_dir} (vnetdp install pins them)")
        elif progs["build"] != progs["this_code"]:
            warnings.append(f"the node runs build {progs['build']}, the sources here are build "
                            f"{progs['this_code']} (vnetdp upgrade switches)")
    names = _section(problems, "links", link_names)
    names = names if "error" not in names else {}
    try:
        with open_maps(dirs) as m:
            node, endpoint_count, maps_error = m.node(), len(m.endpoints()), None
    except Exception as e:
        problems.append(f"maps: {e}")
        node, endpoint_count, maps_error = None, 0, str(e)
    ids = progs.get("programs", {}) if "error" not in progs else {}
    nic_state = out["nic"] = _section(problems, "NIC", nic, dirs, node, names, ids)
    pods = out["pods"] = _section(problems, "pod attachments", pod_attachments, dirs, names)
    if "error" not in pods:
        pods["endpoints"] = endpoint_count
        pods.update(_records_without_endpoints(dirs, problems))
        if pods["missing"]:
            problems.append(f"{len(pods['missing'])} host veth(s) lack pod programs: "
                            + ", ".join(f"{x['host_veth']} ({'+'.join(x['missing'])})" for x in pods["missing"]))
    if "error" not in nic_state:
        _judge_nic(nic_state, out["settings"], endpoint_count, problems, warnings)
    out["agent"] = agent(dirs)
    if not out["agent"]["alive"]:
        warnings.append(f"agent down ({out['agent']['detail']}): CNI calls run in-process, slower")
    pool_rows = out["pools"] = _section(problems, "IPAM", pools, dirs)
    if isinstance(pool_rows, list):
        if not pool_rows:
            warnings.append("no IPAM pools yet (read from the interface document on the next ADD)")
        elif sum(p["free"] for p in pool_rows) == 0:
            problems.append(f"IPAM pool empty: all {sum(p['size'] for p in pool_rows)} addresses in use "
                            "(add secondary IP addresses to the VM's NIC)")
    fill = out["snat"] = {"error": maps_error} if maps_error else _section(problems, "SNAT table", snat, dirs)
    if "error" not in fill and fill["fill"] > SNAT_FULL:
        problems.append(f"SNAT table {fill['fill']:.0%} full ({fill['entries']} of {fill['capacity']} entries)")
    out.update(healthy=not problems, problems=problems, warnings=warnings,
               verdict="healthy" if not problems else "unhealthy: " + "; ".join(problems))
    return out


def _records_without_endpoints(dirs: NodeDirs, problems: list[str]) -> dict[str, Any]:
    from vnetdp.network.records import PodRecords

    records = PodRecords(dirs.state_dir).all()
    try:
        with open_maps(dirs) as m:
            known = {str(ip) for ip in m.endpoints()}
    except Exception:
        return {"records": len(records)}
    lost = sorted(r.container_id for r in records if r.address not in known)
    if lost:
        problems.append(f"{len(lost)} pod(s) have a record but no datapath endpoint: {', '.join(lost)}")
    return {"records": len(records), "without_endpoint": lost}


def _judge_nic(state: dict, node_settings: dict, endpoints: int, problems: list[str], warnings: list[str]) -> None:
    if state["ifindex"] is None:
        (problems if endpoints else warnings).append(
            "the datapath has no node configuration yet (the first ADD writes it and attaches the NIC)")
        return
    from vnetdp.datapath.node import nic_hooks

    hooks = {a["hook"]: a for a in state["attachments"]}
    for want in nic_hooks(node_settings.get("nicAttach") or "tc"):
        if want not in hooks:
            problems.append(f"NIC program missing: nothing of vnetdp at {want} on "
                            f"{state['name'] or state['ifindex']}")
        elif hooks[want]["program"] is None:
            warnings.append(f"the NIC runs program id {hooks[want]['prog_id']} at {want}, "
                            "not one of the pinned build")


# --- pods and their counters ----------------------------------------------------------------
def _counter_key(metric) -> tuple[str, str, bool]:
    reason = describe(metric.reason)
    return DIRECTIONS.get(metric.direction, str(metric.direction)), reason.name, reason.is_drop


def identities(dirs: NodeDirs, m, names: dict[int, str]) -> dict[int, dict[str, Any]]:
    """ifindex -> who it is: a pod's host veth (its record, when there is
    one), or the NIC. Pods come from the endpoints map joined with the
    network plugin's pod records by address."""
    from vnetdp.network.records import PodRecords

    records = {r.address: r for r in PodRecords(dirs.state_dir).all()}
    out: dict[int, dict[str, Any]] = {}
    for address, ep in m.endpoints().items():
        r = records.get(str(address))
        out[ep.ifindex] = {"kind": "pod", "interface": names.get(ep.ifindex) or (
                               naming.host_ifname(r.container_id, r.ifname) if r else f"ifindex-{ep.ifindex}"),
                           "container_id": r.container_id if r else "", "namespace": r.k8s_namespace if r else "",
                           "pod": r.k8s_pod if r else "", "address": str(address), "owner": owner_of(r) if r else ""}
    node = m.node()
    if node is not None:
        out.setdefault(node.nic_ifindex, {"kind": "nic", "interface": names.get(node.nic_ifindex, "nic"),
                                          "container_id": "", "namespace": "", "pod": "",
                                          "address": str(node.primary_ip), "owner": "node"})
    return out


def endpoints(dirs: NodeDirs, m, names: dict[int, str]) -> list[dict[str, Any]]:
    """One row per pod: its record (container, pod, network, owner) joined
    with its datapath endpoint (address, MACs, host veth) and counters
    (both directions; drops are reasons >= VND_DROP_MIN)."""
    from vnetdp.network.records import PodRecords

    eps = {str(ip): ep for ip, ep in m.endpoints().items()}
    quotas = {str(ip): flows for ip, flows in m.snat_quotas().items()}
    counts: dict[int, dict[str, dict[str, int]]] = defaultdict(
        lambda: {d: {"packets": 0, "bytes": 0, "drops": 0} for d in ("from-pod", "to-pod")})
    for metric in m.metrics():
        direction, _, drop = _counter_key(metric)
        if direction not in ("from-pod", "to-pod"):
            continue
        c = counts[metric.ifindex][direction]
        if drop:
            c["drops"] += metric.packets
        else:
            c["packets"] += metric.packets
            c["bytes"] += metric.bytes
    rows = []
    records = PodRecords(dirs.state_dir).all()
    for r in records:
        rows.append(_endpoint_row(r.address, eps.get(r.address), names, counts, quotas, {
            "container_id": r.container_id, "ifname": r.ifname, "namespace": r.k8s_namespace, "pod": r.k8s_pod,
            "owner": owner_of(r), "network": r.network, "netns": r.netns,
            "host_veth": naming.host_ifname(r.container_id, r.ifname)}))
    for address in sorted(eps.keys() - {r.address for r in records}):
        rows.append(_endpoint_row(address, eps[address], names, counts, quotas, {
            "container_id": "", "ifname": "", "namespace": "", "pod": "", "owner": "", "network": "",
            "netns": "", "host_veth": None}))
    return rows


def _endpoint_row(address: str, ep, names, counts, quotas, who: dict[str, Any]) -> dict[str, Any]:
    directions = counts[ep.ifindex] if ep is not None else {d: {"packets": 0, "bytes": 0, "drops": 0}
                                                              for d in ("from-pod", "to-pod")}
    host_veth = (names.get(ep.ifindex) if ep is not None else None) or who["host_veth"] or (
        f"ifindex-{ep.ifindex}" if ep is not None else "")
    return {**who, "address": address, "pod_mac": ep.pod_mac if ep else None,
            "host_mac": ep.host_mac if ep else None, "host_veth": host_veth,
            "host_ifindex": ep.ifindex if ep else None, "in_datapath": ep is not None,
            "snat_flows": quotas.get(address, 0),
            "packets": sum(d["packets"] for d in directions.values()),
            "bytes": sum(d["bytes"] for d in directions.values()),
            "drops": sum(d["drops"] for d in directions.values()),
            "directions": {k: dict(v) for k, v in directions.items()}}
