"""``vnetdp monitor``: the datapath's events as they happen (SPEC §10).

The programs write a ``struct vnd_event`` (``bpf/lib/maps.h``) into the
pinned ring buffer ``maps/events`` for every verdict the monitor switch
(``maps/monitor``) asks for: drops (MONITOR_DROPS), packets forwarded into a
pod, to the VNet or to the host (MONITOR_TRACE), and with MONITOR_NIC_PASS
the host's own traffic from the NIC too (PASS_NIC: everything the node
itself receives, so only when asked for by name). While the switch is 0 a
packet pays one array lookup. The headers are read again as the packet
leaves the program: after SNAT an event carries the translated addresses.

One monitor at a time per node: a ring buffer has a single consumer
position, so two readers would each see an arbitrary share of the events.
The monitor holds an exclusive lock (flock) on the node's maps directory
while it runs (a second one is refused), sets the switch when it starts and
clears it when it ends (normally, on Ctrl-C, SIGTERM or SIGHUP). A monitor
killed with SIGKILL leaves the switch set: events then fill the ring buffer
and are counted as lost, about 55 ns per drop (bench/progcost.py), until the
next monitor ends (``vnetdp monitor --seconds 0`` clears it at once).

Events are read through :mod:`vnetdp.datapath.ringbuf` (no bcc); an
endpoint's ifindex becomes its host veth and pod record as ``vnetdp stats``
shows them (:func:`vnetdp.ops.inspect.identities`).
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vnetdp.datapath import layouts as L
from vnetdp.datapath.reasons import DIRECTIONS, Reason, describe, reasons
from vnetdp.datapath.ringbuf import RingBuffer
from vnetdp.ops import inspect

EVENTS_PIN, SWITCH_PIN = "events", "monitor"
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
ETHERTYPES = {0x0800: "ip", 0x0806: "arp", 0x86DD: "ipv6", 0x8100: "vlan", 0x88A8: "vlan"}
REFRESH_S = 1.0         # at most this often, identities are re-read for an unknown ifindex


class MonitorError(Exception):
    """The monitor cannot run on this node (no ring buffer, another monitor, bad filter)."""


def _const(name: str) -> int:
    return L.constants()[f"VND_{name}"]


def hooks() -> dict[int, str]:
    """enum vnd_hook by value: the program names (``from_container``, ...)."""
    return {value: name.removeprefix("VND_HOOK_").lower() for name, value in L.enum("vnd_hook").items()}


# --- events -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One record of the ring buffer, decoded."""

    ts_ns: int              # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
    hook: str
    direction: str
    reason: Reason
    ifindex: int
    out_ifindex: int
    length: int
    ethertype: int
    proto: int
    saddr: ipaddress.IPv4Address | None
    daddr: ipaddress.IPv4Address | None
    sport: int
    dport: int

    @property
    def protocol(self) -> str:
        if self.ethertype == 0x0800:
            return PROTOCOLS.get(self.proto, f"ip/{self.proto}")
        return ETHERTYPES.get(self.ethertype, f"0x{self.ethertype:04x}")

    def endpoints(self) -> tuple[str, str]:
        """(source, destination) as printed: address:port, ICMP's type and code."""
        if self.saddr is None:
            return "", ""
        if self.proto in (6, 17) and (self.sport or self.dport):
            return f"{self.saddr}:{self.sport}", f"{self.daddr}:{self.dport}"
        if self.proto == 1 and self.ethertype == 0x0800:
            return str(self.saddr), f"{self.daddr} (type {self.sport} code {self.dport})"
        return str(self.saddr), str(self.daddr)


def decode(raw: bytes) -> Event:
    """A ring buffer record as an Event; MonitorError when it is not a struct
    vnd_event of this code's layout (the node runs other sources' build)."""
    size = L.sizeof("struct vnd_event")
    if len(raw) != size:
        raise MonitorError(f"an event of {len(raw)} bytes where struct vnd_event has {size}: the node runs a "
                           "build whose events differ from these sources' (vnetdp upgrade, or the monitor "
                           "of the running build's sources)")
    c = L.new("struct vnd_event")
    L.ffi().memmove(c, raw, size)
    ethertype = socket.ntohs(c.ethertype)
    ip_like = ethertype in (0x0800, 0x0806)  # the datapath read addresses (IPv4; ARP sender, target)
    return Event(c.ts_ns, hooks().get(c.hook, f"hook-{c.hook}"), DIRECTIONS.get(c.dir, str(c.dir)),
                 describe(c.reason), c.ifindex, c.out_ifindex, c.len, ethertype, c.proto,
                 ipaddress.IPv4Address(socket.ntohl(c.saddr)) if ip_like else None,
                 ipaddress.IPv4Address(socket.ntohl(c.daddr)) if ip_like else None,
                 socket.ntohs(c.sport), socket.ntohs(c.dport))


# --- who an ifindex is --------------------------------------------------------------------
class Identities:
    """ifindex -> the endpoint behind it (kind, interface, namespace, pod,
    container_id, address), re-read when an unknown ifindex shows up."""

    def __init__(self, read: Callable[[], dict[int, dict[str, Any]]], clock=time.monotonic) -> None:
        self._read, self._clock = read, clock
        self._known: dict[int, dict[str, Any]] = {}
        self._read_at: float | None = None
        self.refresh()

    def refresh(self) -> None:
        self._known = self._read()
        self._read_at = self._clock()

    def all(self) -> Iterable[dict[str, Any]]:
        return self._known.values()

    def get(self, ifindex: int) -> dict[str, Any] | None:
        if not ifindex:
            return None
        if ifindex not in self._known and self._clock() - self._read_at >= REFRESH_S:
            self.refresh()
        return self._known.get(ifindex)


def who(ident: dict[str, Any] | None, ifindex: int) -> str:
    """An endpoint as printed: namespace/pod, else its container, else its interface."""
    if ident is None:
        return f"ifindex {ifindex}"
    if ident.get("pod"):
        return f"{ident['namespace']}/{ident['pod']}" if ident.get("namespace") else ident["pod"]
    if ident.get("container_id"):
        return f"{ident['container_id'][:12]} ({ident['interface']})"
    return ident["interface"]


# --- what to show ---------------------------------------------------------------------------
def parse_reasons(names: Iterable[str]) -> set[Reason]:
    """Reasons by name (``DROP_SPOOF_IP``, any case, ``VND_`` optional); MonitorError naming the valid ones."""
    by_name = {r.name: r for r in reasons().values()}
    found, unknown = set(), []
    for name in names:
        key = name.upper().removeprefix("VND_")
        if key in by_name:
            found.add(by_name[key])
        else:
            unknown.append(name)
    if unknown:
        raise MonitorError(f"unknown reason(s) {', '.join(unknown)}; reasons are: {', '.join(sorted(by_name))}")
    return found


def switch_flags(trace: bool, wanted: set[Reason]) -> int:
    """The MONITOR_* flags a monitor needs: drops unless only forwarding reasons
    are asked for; traces with --trace or any forwarding reason; the host's own
    NIC traffic only when PASS_NIC is asked for by name."""
    drops = not wanted or any(r.is_drop for r in wanted)
    traces = trace or any(not r.is_drop for r in wanted)
    nic = any(r.name == "PASS_NIC" for r in wanted)
    return ((_const("MONITOR_DROPS") if drops else 0) | (_const("MONITOR_TRACE") if traces else 0)
            | (_const("MONITOR_NIC_PASS") if nic else 0))


@dataclass
class Filter:
    """Which events to show: by reason (none: every reason the switch asks
    for) and by pod: its namespace/name, name, container ID, host veth or
    address (an event of its veth, into it, or carrying its address)."""

    reasons: set[Reason] = field(default_factory=set)
    trace: bool = False
    pod: str | None = None

    def shows_reason(self, e: Event) -> bool:
        if self.reasons:
            return e.reason in self.reasons
        return e.reason.is_drop or self.trace

    def _is_pod(self, ident: dict[str, Any] | None) -> bool:
        if ident is None or ident.get("kind") != "pod":
            return False
        names = {ident.get(k) for k in ("pod", "container_id", "interface", "address")}
        if ident.get("namespace"):
            names.add(f"{ident['namespace']}/{ident['pod']}")
        return self.pod in names - {None, ""}

    def pod_address(self) -> ipaddress.IPv4Address | None:
        try:
            return ipaddress.IPv4Address(self.pod)
        except ValueError:
            return None

    def shows(self, e: Event, ids: Identities) -> bool:
        if not self.shows_reason(e):
            return False
        if self.pod is None:
            return True
        address = self.pod_address()
        if address is not None and address in (e.saddr, e.daddr):
            return True
        return self._is_pod(ids.get(e.ifindex)) or self._is_pod(ids.get(e.out_ifindex))

    def known_pod(self, ids: Identities) -> bool:
        return self.pod is None or self.pod_address() is not None or any(self._is_pod(i) for i in ids.all())


# --- output -------------------------------------------------------------------------------
def as_dict(e: Event, ids: Identities, clock_offset: float) -> dict[str, Any]:
    """An event for JSON lines: time (Unix seconds), where, who, what, why."""
    ident = ids.get(e.ifindex) or {}
    out = ids.get(e.out_ifindex)
    return {"time": round(e.ts_ns / 1e9 + clock_offset, 6), "hook": e.hook, "direction": e.direction,
            "reason": e.reason.name, "drop": e.reason.is_drop, "ifindex": e.ifindex,
            "interface": ident.get("interface", ""), "kind": ident.get("kind", ""),
            "namespace": ident.get("namespace", ""), "pod": ident.get("pod", ""),
            "container_id": ident.get("container_id", ""),
            "out_ifindex": e.out_ifindex, "out": who(out, e.out_ifindex) if e.out_ifindex else "",
            "protocol": e.protocol, "saddr": str(e.saddr) if e.saddr else "", "sport": e.sport,
            "daddr": str(e.daddr) if e.daddr else "", "dport": e.dport, "length": e.length}


def render(e: Event, ids: Identities, clock_offset: float) -> str:
    """One line: time, hook, reason, endpoint, protocol, source -> destination, target, length."""
    stamp = time.strftime("%H:%M:%S", time.localtime(e.ts_ns / 1e9 + clock_offset))
    micros = int((e.ts_ns / 1e3 + clock_offset * 1e6) % 1e6)
    src, dst = e.endpoints()
    parts = [f"{stamp}.{micros:06d}", f"{e.hook:<14}", f"{e.reason.name:<22}", who(ids.get(e.ifindex), e.ifindex),
             e.protocol]
    if src:
        parts.append(f"{src} -> {dst}")
    if e.out_ifindex:
        parts.append(f"=> {who(ids.get(e.out_ifindex), e.out_ifindex)}")
    parts.append(f"len {e.length}")
    return " ".join(parts)


# --- running ------------------------------------------------------------------------------
@contextlib.contextmanager
def only_monitor(maps_dir: str) -> Iterator[None]:
    """Hold the node's monitor lock (flock on the maps directory) or refuse."""
    try:
        fd = os.open(maps_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise MonitorError(f"no maps pinned in {maps_dir} (vnetdp install pins them)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MonitorError(f"another vnetdp monitor is reading this node's events ({maps_dir}): a ring buffer "
                               "has one reader, stop that one first") from None
        yield
    finally:
        os.close(fd)


class _Stop(Exception):
    """SIGTERM or SIGHUP: end like Ctrl-C."""


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    def stop(signum, frame):
        raise _Stop(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def switched_on(m, flags: int) -> Iterator[int]:
    """The switch set to ``flags`` for the ``with`` body, cleared afterwards
    whatever ends it; yields the lost count it started with."""
    start = m.set_monitor(flags)
    try:
        yield start.lost
    finally:
        with _no_interrupts():
            m.set_monitor(0)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM while the switch is being cleared waits for it."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _check_pins(dirs: inspect.NodeDirs) -> None:
    missing = [pin for pin in (SWITCH_PIN, EVENTS_PIN) if not os.path.exists(os.path.join(dirs.bpffs.maps_dir, pin))]
    if missing:
        raise MonitorError(f"the node pinned in {dirs.bpffs_dir} has no {' or '.join(missing)} map: it runs a build "
                           "from before vnetdp monitor (vnetdp upgrade brings one)")


class _Lost:
    """Events the datapath could not write (ring buffer full), noted as they grow."""

    def __init__(self, m, warn: Callable[[str], None], start: int) -> None:
        self.m, self.warn, self.seen, self.at = m, warn, start, time.monotonic()

    def check(self, now: float, every: float = 1.0) -> None:
        if now - self.at < every:
            return
        self.at = now
        lost = self.m.monitor().lost
        if lost > self.seen:
            self.warn(f"{lost - self.seen} event(s) lost: the ring buffer was full")
            self.seen = lost


def _records(ring: RingBuffer, deadline: float | None, lost: _Lost) -> Iterator[bytes]:
    """Records as they come, until ``deadline`` (monotonic seconds; None: forever)."""
    while True:
        yield from ring.read()
        now = time.monotonic()
        lost.check(now)
        if deadline is not None and now >= deadline:
            return
        ring.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - now)))


def run(dirs: inspect.NodeDirs, filt: Filter, emit: Callable[[str], None], json_lines: bool = False,
        count: int | None = None, seconds: float | None = None, warn: Callable[[str], None] | None = None,
        started: Callable[[], None] | None = None) -> int:
    """Stream events until ``count`` are shown or ``seconds`` pass (or forever),
    or Ctrl-C, SIGTERM, SIGHUP; the number shown. ``emit`` gets each line,
    ``warn`` notes for the operator (lost events, an unknown pod), ``started``
    is called once the switch is on. Runs in the node's network namespace
    (interface names); pins are paths."""
    warn = warn or (lambda text: print(f"vnetdp monitor: {text}", file=sys.stderr, flush=True))
    flags = switch_flags(filt.trace, filt.reasons)
    deadline = time.monotonic() + seconds if seconds is not None else None
    clock_offset = time.time() - time.monotonic()
    shown = 0
    with only_monitor(dirs.bpffs.maps_dir), inspect.open_maps(dirs) as m:
        _check_pins(dirs)
        ids = Identities(lambda: inspect.identities(dirs, m, inspect.link_names()))
        if not filt.known_pod(ids):
            warn(f"no pod {filt.pod!r} on this node yet; its events show once there is")
        with RingBuffer(os.path.join(dirs.bpffs.maps_dir, EVENTS_PIN)) as ring:
            ring.skip()  # what an earlier monitor left is stale
            try:
                with _stopped_by_signals(), switched_on(m, flags) as lost_before:
                    lost = _Lost(m, warn, lost_before)
                    if started:
                        started()
                    for raw in _records(ring, deadline, lost):
                        event = decode(raw)
                        if filt.shows(event, ids):
                            emit(json.dumps(as_dict(event, ids, clock_offset)) if json_lines
                                 else render(event, ids, clock_offset))
                            shown += 1
                            if count is not None and shown >= count:
                                break
                    lost.check(time.monotonic(), every=0)
            except (KeyboardInterrupt, _Stop):
                pass
    return shown
