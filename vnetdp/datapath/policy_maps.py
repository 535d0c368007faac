"""The node policy maps (``bpf/lib/policy.h``) from the control plane.

A compiled rule set is a ``Tables``: its remote prefixes per direction and
layer, each with an address class, and per (class, protocol) its destination
port prefixes, each with the candidate rules. ``PolicyMaps`` writes and removes
sets, points endpoints at them, flips the switch, and reads the flows and the
drop counters. What goes into a set is ``vnetdp.policy.compile``'s business.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall

INBOUND, OUTBOUND = M.POLICY_INBOUND, M.POLICY_OUTBOUND
ADDR_BITS, PORT_BITS = 64, 80     # the always-matched key bits (bpf/lib/policy.h)
PORT_MAX = 65535
NO_RULE = M.POLICY_NO_RULE
CANDIDATES = M.POLICY_CANDIDATES
LAYERS = M.POLICY_LAYERS
PROTO_OTHER = M.POLICY_PROTO_OTHER
#: the protocols the port tables are kept for
PROTOCOLS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP, PROTO_OTHER)


class PolicyMapFull(Exception):
    """A policy map has no room for a compiled set's entries."""


@dataclass(frozen=True)
class Candidate:
    """A rule that may decide a port prefix's packets."""

    rule: int                           # its index in the rule set
    allow: bool
    sport: tuple[int, int] = (0, PORT_MAX)  # the source ports it holds


@dataclass(frozen=True)
class PortPrefix:
    """A destination port prefix of an address class, for one protocol."""

    cls: int
    proto: int                          # PROTOCOLS
    port: int
    length: int                         # 0-16 bits


@dataclass
class Tables:
    """The datapath's form of one compiled rule set."""

    #: (direction, layer, remote prefix's address as an int, its length) -> address class
    addrs: dict[tuple[int, int, int, int], int] = field(default_factory=dict)
    ports: dict[PortPrefix, tuple[Candidate, ...]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.addrs) + len(self.ports)


@dataclass(frozen=True)
class Flow:
    """A flow a pod's rules allowed, as the pod sees it."""

    pod: ipaddress.IPv4Address
    remote: ipaddress.IPv4Address
    pod_port: int                       # ICMP echo: the id
    remote_port: int
    proto: int
    last_seen_ns: int
    set: int
    rule: int                           # NO_RULE: the host's own flow
    direction: int                      # INBOUND or OUTBOUND: the packet that opened it
    flags: int

    @property
    def closing(self) -> bool:
        return bool(self.flags & M.POLICY_FLOW_CLOSING)

    @property
    def replied(self) -> bool:
        return bool(self.flags & M.POLICY_FLOW_REPLIED)

    def key(self):
        return M.HostFlow(self.pod, self.remote, self.pod_port, self.remote_port, self.proto).key()


@dataclass(frozen=True)
class Drop:
    """Packets one rule denied one pod."""

    pod: ipaddress.IPv4Address
    set: int
    rule: int
    direction: int
    packets: int
    bytes: int


class PolicyMaps(M.MapSet):
    """The policy maps of one node (each opened on first use)."""

    _node = M.Pinned("policy_node", "__u32", "struct vnd_policy_node")
    _endpoints = M.Pinned("policy_endpoints", "__be32", "struct vnd_policy_endpoint")
    _addrs = M.Pinned("policy_addrs", "struct vnd_policy_addr_key", "struct vnd_policy_class")
    _ports = M.Pinned("policy_ports", "struct vnd_policy_port_key", "struct vnd_policy_rules")
    _flows = M.Pinned("policy_flows", "struct vnd_flow_key", "struct vnd_policy_flow")
    _drops = M.Pinned("policy_drops", "struct vnd_policy_drop_key", "struct vnd_metrics_val", percpu=True)

    @classmethod
    def pinned(cls, maps_dir: str) -> PolicyMaps | None:
        """The node's policy maps; None when its programs predate node policy
        (or nothing is pinned yet)."""
        pm = cls(maps_dir)
        return pm if pm.is_pinned(cls._node) else None

    # the switch: while it is off, the programs read nothing else
    def enabled(self) -> bool:
        return bool(self._node.get(0).endpoints)

    def set_enabled(self, on: bool) -> None:
        self._node.put(0, {"endpoints": int(on)})

    # endpoints' sets
    def endpoint_set(self, ip: ipaddress.IPv4Address | str) -> int:
        """The endpoint's set; 0 for none."""
        c = self._endpoints.get(M.ip_be32(ip))
        return c.set if c is not None else 0

    def put_endpoint_set(self, ip: ipaddress.IPv4Address | str, set_id: int) -> None:
        self._endpoints.put(M.ip_be32(ip), {"set": set_id})

    def delete_endpoint_set(self, ip: ipaddress.IPv4Address | str) -> bool:
        return self._endpoints.delete(M.ip_be32(ip))

    def endpoint_sets(self) -> dict[ipaddress.IPv4Address, int]:
        return {M.ip_of(k): v.set for k, v in self._endpoints.items()}

    # compiled sets
    @staticmethod
    def _addr_key(set_id: int, direction: int, layer: int, addr: int, length: int) -> dict:
        return {"prefixlen": ADDR_BITS + length, "set": set_id, "dir": direction, "layer": layer,
                "addr": socket.htonl(addr)}

    def write_set(self, set_id: int, tables: Tables) -> None:
        """Write a set's entries, its Inbound layer 0 0.0.0.0/0 last
        (``has_set``); PolicyMapFull (nothing of it left) when a map is full."""
        last = (INBOUND, 0, 0, 0)
        try:
            for key, value in self._port_entries(set_id, tables):
                self._ports.put(key, value)
            for prefix in sorted(tables.addrs, key=lambda p: p == last):
                self._addrs.put(self._addr_key(set_id, *prefix), {"id": tables.addrs[prefix]})
        except syscall.BpfError as e:
            if e.errno not in (errno.ENOSPC, errno.E2BIG, errno.ENOMEM):
                raise
            self.delete_set(set_id)
            raise PolicyMapFull(f"the policy maps have no room for {tables.size} more entries "
                                f"({len(tables.addrs)} prefixes, {len(tables.ports)} port prefixes); "
                                "they hold VND_MAX_POLICY_PREFIXES and VND_MAX_POLICY_PORTS "
                                "(compile flags, see vnetdp upgrade --cflags)") from None

    @staticmethod
    def _port_entries(set_id: int, tables: Tables) -> Iterator[tuple[dict, dict]]:
        for p, candidates in tables.ports.items():
            yield ({"prefixlen": PORT_BITS + p.length, "set": set_id, "class": p.cls, "proto": p.proto,
                    "port": socket.htons(p.port)},
                   {"count": len(candidates),
                    "rule": [{"rule": c.rule, "allow": int(c.allow), "sport_min": c.sport[0],
                              "sport_max": c.sport[1]} for c in candidates]})

    def has_set(self, set_id: int) -> bool:
        """Whether the set is written whole (one lookup)."""
        return self._addrs.get(self._addr_key(set_id, INBOUND, 0, 0, 0)) is not None

    def set_ids(self) -> set[int]:
        """Every set with entries in the maps."""
        return {k.set for k in self._addrs.keys()} | {k.set for k in self._ports.keys()}

    def delete_set(self, set_id: int) -> int:
        """Remove a set's entries; how many there were."""
        removed = 0
        for m in (self._addrs, self._ports):
            for key in [k for k in m.keys() if k.set == set_id]:
                removed += m.delete(key)
        return removed

    # flows
    def flows(self) -> list[Flow]:
        return [Flow(M.ip_of(k.pod), M.ip_of(k.remote), socket.ntohs(k.pod_port), socket.ntohs(k.remote_port),
                     k.proto, v.last_seen, v.set, v.rule, v.dir, v.flags)
                for k, v in self._flows.batch_items()]

    def delete_flow(self, flow: Flow) -> bool:
        return self._flows.delete(flow.key())

    # counters
    def drops(self) -> list[Drop]:
        """Packets denied, summed over CPUs."""
        return [Drop(M.ip_of(k.pod), k.set, k.rule, k.dir, sum(v.packets for v in vals),
                     sum(v.bytes for v in vals)) for k, vals in self._drops.items()]

    def forget_drops(self, which) -> None:
        """Drop the counters for which ``which(Drop)`` holds."""
        for d in self.drops():
            if which(d):
                self._drops.delete({"pod": M.ip_be32(d.pod), "set": d.set, "rule": d.rule, "dir": d.direction})
