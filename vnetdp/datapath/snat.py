"""The SNAT connection table from the control plane: flows and their expiry.

The datapath (``bpf/lib/snat.h``) creates both entries of a flow and stamps
them with the last time a packet used them and with a closing flag after a
TCP FIN or RST. Expiry is this module's sweep rather than BPF timers: a sweep
sees both directions of a flow at once (a flow is idle only when both are),
removes orphans (one direction without the other, left by a race or a
crash), and can forget a deleted pod's flows, all without adding work to the
per-packet path. ``vnetdp snat sweep --every S`` runs it on a node.
"""
from __future__ import annotations

import collections
import errno
import ipaddress
import socket
import time
from dataclasses import dataclass

from vnetdp.datapath import maps as M

PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp"}


@dataclass(frozen=True)
class Timeouts:
    """Idle times (seconds) after which a flow's entries are removed."""

    tcp: float = 7440.0         # RFC 5382 REQ-5: no less than 2 h 4 min
    tcp_closing: float = 10.0   # after a FIN or RST went through
    udp: float = 120.0          # RFC 4787 REQ-5: no less than 2 min
    icmp: float = 60.0          # RFC 5508 REQ-1: no less than 60 s
    orphan: float = 5.0         # one direction without the other
    embryonic: float = 30.0     # no reply ever came (conntrack's SYN_SENT is of this order)

    def for_flow(self, proto: int, closing: bool, replied: bool = True) -> float:
        if proto == socket.IPPROTO_TCP:
            timeout = self.tcp_closing if closing else self.tcp
        else:
            timeout = self.udp if proto == socket.IPPROTO_UDP else self.icmp
        return timeout if replied else min(timeout, self.embryonic)


@dataclass(frozen=True)
class Flow:
    """Both directions of one translated flow (either may be missing: an orphan)."""

    out: M.SnatEntry | None
    inbound: M.SnatEntry | None

    @property
    def entries(self) -> list[M.SnatEntry]:
        return [e for e in (self.out, self.inbound) if e is not None]

    @property
    def proto(self) -> int:
        return self.entries[0].proto

    @property
    def pod(self) -> tuple[ipaddress.IPv4Address, int]:
        if self.out:
            return self.out.saddr, self.out.sport
        return self.inbound.addr, self.inbound.port

    @property
    def remote(self) -> tuple[ipaddress.IPv4Address, int]:
        if self.out:
            return self.out.daddr, self.out.dport
        return self.inbound.saddr, self.inbound.sport

    @property
    def translated(self) -> tuple[ipaddress.IPv4Address, int]:
        if self.out:
            return self.out.addr, self.out.port
        return self.inbound.daddr, self.inbound.dport

    @property
    def closing(self) -> bool:
        return any(e.flags & M.SNAT_CLOSING for e in self.entries)

    @property
    def replied(self) -> bool:
        """A reply came back through the NIC (the datapath marks the IN entry)."""
        return any(e.flags & M.SNAT_REPLIED for e in self.entries)

    def idle(self, now_ns: int) -> float:
        return (now_ns - max(e.last_seen_ns for e in self.entries)) / 1e9

    def as_dict(self, now_ns: int) -> dict:
        return {"proto": PROTOCOLS.get(self.proto, str(self.proto)),
                "pod": f"{self.pod[0]}:{self.pod[1]}", "remote": f"{self.remote[0]}:{self.remote[1]}",
                "translated": f"{self.translated[0]}:{self.translated[1]}",
                "idle_s": round(self.idle(now_ns), 1), "closing": self.closing, "replied": self.replied,
                "orphan": self.out is None or self.inbound is None}


def _in_key(out: M.SnatEntry) -> tuple:
    """The IN entry's key fields for an OUT entry."""
    return (out.proto, out.daddr, out.addr, out.dport, out.port)


def flows(maps: M.Maps) -> list[Flow]:
    entries = maps.snat_entries()
    inbound = {(e.proto, e.saddr, e.daddr, e.sport, e.dport): e
               for e in entries if e.direction == M.SNAT_IN}
    result = []
    for e in entries:
        if e.direction == M.SNAT_OUT:
            result.append(Flow(e, inbound.pop(_in_key(e), None)))
    result += [Flow(None, e) for e in inbound.values()]
    return result


@dataclass(frozen=True)
class SweepResult:
    expired: int     # flows idle beyond their timeout
    orphans: int     # single directions removed
    gone: int        # flows of pods that no longer exist
    remaining: int


def now_ns() -> int:
    """The clock bpf_ktime_get_ns() reads."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def sweep(maps: M.Maps, timeouts: Timeouts = Timeouts(), now: int | None = None) -> SweepResult:
    """Remove expired flows, orphans past their grace time and flows of deleted
    pods; then set each pod's flow count, which its SNAT quota is checked
    against (the datapath only counts up)."""
    now = now_ns() if now is None else now
    pods = set(maps.endpoints())
    expired = orphans = gone = 0
    per_pod: collections.Counter = collections.Counter()
    for flow in flows(maps):
        idle = flow.idle(now)
        if flow.out is None or flow.inbound is None:
            drop = idle > timeouts.orphan
            orphans += drop
        elif flow.pod[0] not in pods:
            drop = True
            gone += 1
        else:
            drop = idle > timeouts.for_flow(flow.proto, flow.closing, flow.replied)
            expired += drop
        if drop:
            for entry in flow.entries:
                maps.delete_snat(entry)
        else:
            per_pod[flow.pod[0]] += 1
    for pod in set(maps.snat_quotas()) - set(per_pod):
        maps.delete_snat_quota(pod)
    for pod, count in per_pod.items():
        maps.put_snat_quota(pod, count)
    return SweepResult(expired, orphans, gone, sum(per_pod.values()))


def purge(maps: M.Maps, pod: ipaddress.IPv4Address) -> int:
    """Forget every flow of ``pod`` (translated or delivered by the host), at
    once: its address may go to a new pod, which must not see them."""
    removed = 0
    for flow in flows(maps):
        if flow.pod[0] == pod:
            for entry in flow.entries:
                removed += maps.delete_snat(entry)
    for host_flow in maps.host_flows():
        if host_flow.pod == pod:
            removed += maps.delete_host_flow(host_flow)
    maps.delete_snat_quota(pod)
    return removed


class Sweeper:
    """Periodic sweeps of the table pinned under ``bpffs_dir``: the agent's
    and ``vnetdp snat sweep --every``'s one loop body."""

    def __init__(self, bpffs_dir: str, every: float, timeouts: Timeouts = Timeouts()) -> None:
        self.bpffs_dir, self.every, self.timeouts = bpffs_dir, every, timeouts
        self.next = time.monotonic()

    def seconds_left(self) -> float:
        return max(0.0, self.next - time.monotonic())

    def sweep_if_due(self) -> SweepResult | None:
        """A sweep when one is due and the maps exist (they are pinned with
        the node's first pod), of the node policy's flows too; None otherwise."""
        if time.monotonic() < self.next:
            return None
        self.next = time.monotonic() + self.every
        from vnetdp.datapath import policy_flows
        from vnetdp.datapath.bpffs import Bpffs
        maps_dir = Bpffs(self.bpffs_dir).maps_dir
        try:
            with M.Maps(maps_dir) as m:
                result = sweep(m, self.timeouts)
            policy_flows.sweep_pinned(maps_dir, self.timeouts)
            return result
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None
