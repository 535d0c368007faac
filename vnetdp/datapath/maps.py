"""Typed access to the pinned maps declared in ``bpf/lib/maps.h``.

Keys and values are the C structs of maps.h itself, read by
:mod:`vnetdp.datapath.layouts` with cffi; there is no Python copy of any
layout or constant. Maps are opened from their bpffs pins, so reading or
writing them never compiles anything.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Self

from vnetdp.datapath import layouts as L
from vnetdp.datapath import syscall

#: Every #define and enum constant of maps.h's layouts section, named without
#: its "VND_": NODE_SNAT is VND_NODE_SNAT, SNAT_IN is VND_SNAT_IN. They are
#: module attributes too (M.NODE_SNAT): a new flag needs only its #define.
CONSTANTS = {name.removeprefix("VND_"): value for name, value in L.constants().items()}
globals().update(CONSTANTS)

#: enum vnd_dest: what a prefix in the vnet_cidrs map means (OUTSIDE: not in the map).
Dest = IntEnum("Dest", {name.removeprefix("VND_DEST_"): value
                        for name, value in L.enum("vnd_dest").items()}, module=__name__)


def mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def mac_str(mac) -> str:
    """``aa:bb:...`` of a __u8[6] field."""
    return ":".join(f"{b:02x}" for b in mac)


def ip_be32(ip: ipaddress.IPv4Address | str) -> int:
    """The value of a __be32 field holding ``ip``."""
    return socket.htonl(int(ipaddress.IPv4Address(ip)))


def ip_of(be32: int) -> ipaddress.IPv4Address:
    """The address a __be32 field holds."""
    return ipaddress.IPv4Address(socket.ntohl(be32))


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU maps hold one value slot for each."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    return sum(int(b) - int(a) + 1 if "-" in part else 1
               for part in text.split(",") for a, _, b in [part.partition("-")])


class PinnedMap:
    """A pinned BPF map whose key and value are C types of the layouts section,
    named as in C (``"__be32"``, ``"struct vnd_endpoint"``).

    Keys and values go in as cffi pointers or as what ``layouts.new`` takes
    (an int for an integer type; a dict or list for a struct) and come out
    as owning cffi pointers (ints for integer types); a per-CPU map's value
    comes out as a list, one per possible CPU. Opening checks the sizes with
    the kernel's map, so a buffer never disagrees with the map it is for.
    """

    def __init__(self, path: str, key: str, value: str, percpu: bool = False) -> None:
        self.path = path
        self.key_type = key
        self.value_type = value
        self.percpu = percpu
        self.fd = syscall.obj_get(path)
        try:
            self._check_sizes()
        except BaseException:
            self.close()
            raise

    def _check_sizes(self) -> None:
        info = syscall.obj_info(self.fd, syscall.MapInfo())
        have = (info.key_size, info.value_size)
        want = (L.sizeof(self.key_type), L.sizeof(self.value_type))
        if have != want:
            raise L.LayoutError(f"{self.path}: the map's key and value are {have[0]} and {have[1]} bytes, "
                                f"{self.key_type} and {self.value_type} are {want[0]} and {want[1]}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def _buf(ctype: str, x):
        """``x`` as a pointer to ``ctype`` for the kernel (itself if it is one)."""
        if isinstance(x, L.ffi().CData) and L.ffi().typeof(x) == L.pointer_type(ctype):
            return x
        return L.new(ctype, x)

    @staticmethod
    def _out(ctype: str, ptr):
        return ptr[0] if L.is_integer(ctype) else ptr

    def get(self, key):
        """The value for ``key``, None when there is none."""
        key = self._buf(self.key_type, key)
        if not self.percpu:
            value = L.new(self.value_type)
            return self._out(self.value_type, value) if syscall.map_lookup(self.fd, key, value) else None
        # The kernel lays per-CPU values out at 8-byte strides.
        size = L.sizeof(self.value_type)
        stride = (size + 7) // 8 * 8
        buf = L.ffi().new("uint8_t[]", stride * possible_cpus())
        if not syscall.map_lookup(self.fd, key, buf):
            return None
        values = [L.new(self.value_type) for _ in range(possible_cpus())]
        for i, value in enumerate(values):
            L.ffi().memmove(value, buf + i * stride, size)
        return [self._out(self.value_type, v) for v in values]

    def put(self, key, value, flags: int = syscall.BPF_ANY) -> None:
        syscall.map_update(self.fd, self._buf(self.key_type, key), self._buf(self.value_type, value), flags)

    def delete(self, key) -> bool:
        return syscall.map_delete(self.fd, self._buf(self.key_type, key))

    def keys(self) -> Iterator:
        prev, nxt = None, L.new(self.key_type)
        while syscall.map_next_key(self.fd, prev, nxt):
            yield self._out(self.key_type, nxt)
            prev, nxt = nxt, L.new(self.key_type)

    def items(self) -> Iterator[tuple]:
        for key in self.keys():
            value = self.get(key)
            if value is not None:  # deleted between next_key and lookup
                yield key, value

    def batch_items(self, chunk: int = 4096) -> Iterator[tuple]:
        """Every (key, value) of a hash map, ``chunk`` entries per bpf() call."""
        if self.percpu:
            raise NotImplementedError(f"{self.path}: batch lookup of a per-CPU map")
        keys = L.ffi().new(f"{self.key_type}[]", chunk)
        values = L.ffi().new(f"{self.value_type}[]", chunk)
        for count in syscall.map_lookup_batch(self.fd, keys, values):
            for i in range(count):
                yield (self._out(self.key_type, L.new(self.key_type, keys[i])),
                       self._out(self.value_type, L.new(self.value_type, values[i])))


@dataclass(frozen=True)
class Endpoint:
    """One pod as the datapath sees it."""

    ifindex: int
    pod_mac: str
    host_mac: str
    flags: int = 0          # EP_*: EP_HOST_FLOWS is the datapath's, EP_BANDWIDTH and EP_PUBLIC_IP the control plane's

    def to_c(self):
        return L.new("struct vnd_endpoint", {"ifindex": self.ifindex, "pod_mac": mac_bytes(self.pod_mac),
                                             "host_mac": mac_bytes(self.host_mac), "flags": self.flags})

    @classmethod
    def from_c(cls, c) -> Endpoint:
        return cls(c.ifindex, mac_str(c.pod_mac), mac_str(c.host_mac), c.flags)


NSEC_PER_SEC = 1_000_000_000
BURST_DEFAULT_NS = 20_000_000   # a burst of 0: the rate for 20 ms
BURST_MAX_NS = NSEC_PER_SEC     # at most the rate for 1 s ...
BURST_MIN = 64 * 1024           # ... but at least 64 KiB, the largest (GSO) packet
RATE_MAX = 2**32 - 1            # bytes/s: tbf's 32-bit rate (34 Gbit/s)


def _bits_to_bytes(bits: int) -> int:
    """Rounded up: a small nonzero amount stays nonzero."""
    return -(-bits // 8)


def _burst(rate: int, burst: int) -> int:
    """The burst, in bytes, that a direction at ``rate`` bytes/s gets for the
    ``burst`` asked (0: the default): 0 for an unlimited direction."""
    if not rate:
        return 0
    burst = burst or -(-rate * BURST_DEFAULT_NS // NSEC_PER_SEC)
    return max(min(burst, rate * BURST_MAX_NS // NSEC_PER_SEC), BURST_MIN)


def _burst_ns(rate: int, burst: int) -> int:
    """``burst`` bytes as time at ``rate``, rounded up (a burst is never 0 ns)."""
    return -(-burst * NSEC_PER_SEC // rate) if rate else 0


def _burst_bytes(rate: int, burst_ns: int) -> int:
    """The inverse of _burst_ns, exact for rates up to 1e9 bytes/s."""
    return max(burst_ns * rate // NSEC_PER_SEC, 1 if burst_ns else 0)


@dataclass(frozen=True)
class Bandwidth:
    """A pod's rate limits in bytes per second, 0 meaning unlimited, and the
    bursts they allow, in bytes: egress is what the pod sends, ingress what it
    receives. tbf qdiscs keep them (vnetdp/shaping.py: a pod idle long enough
    may send its burst at once, then its rate; what is above waits in a
    queue); the datapath steers a pod's ingress through its qdisc and
    polices its egress behind the pod's own shaper (bpf/lib/bandwidth.h),
    reading them only for an endpoint flagged EP_BANDWIDTH.

    The bursts are settled on construction, so what is written is what
    reads back. A burst of 0 is the default, the rate for 20 ms (about a
    round trip in a region). A burst, asked or default, is at most the rate
    for 1 s (the Kubernetes bandwidth annotations give none, and runtimes
    pass zero or huge values: a bucket of minutes would let an idle pod
    flood at line rate), and at least 64 KiB, the largest packet the stack
    hands a qdisc (tbf drops a packet larger than its bucket). An unlimited
    direction's burst is 0. Rates are at most RATE_MAX, tbf's."""

    egress_bytes_per_s: int = 0
    ingress_bytes_per_s: int = 0
    egress_burst_bytes: int = 0
    ingress_burst_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("egress_bytes_per_s", "ingress_bytes_per_s", "egress_burst_bytes", "ingress_burst_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Bandwidth.{name} must be a whole number >= 0, not {value!r}")
        for name in ("egress_bytes_per_s", "ingress_bytes_per_s"):
            if getattr(self, name) > RATE_MAX:
                raise ValueError(f"Bandwidth.{name} must be at most {RATE_MAX} bytes/s "
                                 f"({RATE_MAX * 8} bits/s), not {getattr(self, name)}")
        object.__setattr__(self, "egress_burst_bytes", _burst(self.egress_bytes_per_s, self.egress_burst_bytes))
        object.__setattr__(self, "ingress_burst_bytes", _burst(self.ingress_bytes_per_s, self.ingress_burst_bytes))

    @classmethod
    def from_bits(cls, egress_rate_bits: int = 0, ingress_rate_bits: int = 0, egress_burst_bits: int = 0,
                  ingress_burst_bits: int = 0) -> Bandwidth:
        """From rates in bits per second and bursts in bits (the runtime's
        egressRate, ingressRate, egressBurst, ingressBurst), rounded up to
        bytes: a small nonzero rate stays a limit."""
        return cls(_bits_to_bytes(egress_rate_bits), _bits_to_bytes(ingress_rate_bits),
                   _bits_to_bytes(egress_burst_bits), _bits_to_bytes(ingress_burst_bits))

    @property
    def limited(self) -> bool:
        return bool(self.egress_bytes_per_s or self.ingress_bytes_per_s)

    def to_c(self):
        """The map value: each burst as time at its rate (burst_ns, rounded
        up), both clocks at 0 (each direction may send its burst at once)."""
        return L.new("struct vnd_bandwidth", {
            "egress": {"bytes_per_s": self.egress_bytes_per_s,
                       "burst_ns": _burst_ns(self.egress_bytes_per_s, self.egress_burst_bytes)},
            "ingress": {"bytes_per_s": self.ingress_bytes_per_s,
                        "burst_ns": _burst_ns(self.ingress_bytes_per_s, self.ingress_burst_bytes)}})

    @classmethod
    def from_c(cls, c) -> Bandwidth:
        """The limits of a map value; the bursts back in bytes (exact for rates up
        to 1e9 bytes/s: burst_ns counts whole nanoseconds)."""
        return cls(c.egress.bytes_per_s, c.ingress.bytes_per_s,
                   _burst_bytes(c.egress.bytes_per_s, c.egress.burst_ns),
                   _burst_bytes(c.ingress.bytes_per_s, c.ingress.burst_ns))


@dataclass(frozen=True)
class Node:
    """Node settings: the NIC, the fabric gateway's MAC, the primary IP."""

    nic_ifindex: int
    nic_mac: str
    gw_mac: str
    primary_ip: ipaddress.IPv4Address
    snat_port_min: int = 61000
    snat_port_max: int = 65535
    flags: int = CONSTANTS["NODE_LOCAL_SWITCHING"] | CONSTANTS["NODE_SNAT"]
    snat_flows_per_endpoint: int = 0    # translated flows one pod may create; 0: no limit

    def to_c(self):
        return L.new("struct vnd_node", {
            "nic_ifindex": self.nic_ifindex, "nic_mac": mac_bytes(self.nic_mac), "gw_mac": mac_bytes(self.gw_mac),
            "primary_ip": ip_be32(self.primary_ip), "snat_port_min": self.snat_port_min,
            "snat_port_max": self.snat_port_max, "flags": self.flags,
            "snat_flows_per_endpoint": self.snat_flows_per_endpoint})

    @classmethod
    def from_c(cls, c) -> Node:
        return cls(c.nic_ifindex, mac_str(c.nic_mac), mac_str(c.gw_mac), ip_of(c.primary_ip),
                   c.snat_port_min, c.snat_port_max, c.flags, c.snat_flows_per_endpoint)


@dataclass(frozen=True)
class SnatEntry:
    """One direction of a translated flow, as the table holds it."""

    direction: int          # SNAT_OUT or SNAT_IN
    proto: int
    saddr: ipaddress.IPv4Address
    daddr: ipaddress.IPv4Address
    sport: int
    dport: int
    addr: ipaddress.IPv4Address  # OUT: primary IP; IN: pod address
    port: int                    # OUT: SNAT port; IN: pod port
    last_seen_ns: int            # CLOCK_MONOTONIC
    flags: int                   # SNAT_CLOSING, SNAT_RESET, SNAT_REPLIED (IN entries)

    @property
    def replied(self) -> bool:
        """An IN entry whose flow has had a reply (since a SYN reopened it)."""
        return bool(self.flags & CONSTANTS["SNAT_REPLIED"])

    def key(self):
        return L.new("struct vnd_snat_key", {
            "saddr": ip_be32(self.saddr), "daddr": ip_be32(self.daddr), "sport": socket.htons(self.sport),
            "dport": socket.htons(self.dport), "proto": self.proto, "dir": self.direction})

    @classmethod
    def from_c(cls, k, v) -> SnatEntry:
        return cls(k.dir, k.proto, ip_of(k.saddr), ip_of(k.daddr), socket.ntohs(k.sport),
                   socket.ntohs(k.dport), ip_of(v.addr), socket.ntohs(v.port), v.last_seen, v.flags)


@dataclass(frozen=True)
class HostFlow:
    """A flow the host stack delivered to a pod (a DNAT's), whose replies go back to the host."""

    pod: ipaddress.IPv4Address
    remote: ipaddress.IPv4Address
    pod_port: int
    remote_port: int
    proto: int
    last_seen_ns: int = field(default=0, compare=False)  # CLOCK_MONOTONIC

    def key(self):
        return L.new("struct vnd_flow_key", {
            "pod": ip_be32(self.pod), "remote": ip_be32(self.remote), "pod_port": socket.htons(self.pod_port),
            "remote_port": socket.htons(self.remote_port), "proto": self.proto})

    @classmethod
    def from_c(cls, k, last_seen_ns: int = 0) -> HostFlow:
        return cls(ip_of(k.pod), ip_of(k.remote), socket.ntohs(k.pod_port), socket.ntohs(k.remote_port),
                   k.proto, last_seen_ns)


@dataclass(frozen=True)
class Metric:
    ifindex: int
    direction: int
    reason: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class MonitorSwitch:
    """The monitor switch: which events the datapath writes to the events ring
    buffer (MONITOR_* flags; 0: none, the programs then only read this), and
    how many it lost because the ring buffer was full."""

    flags: int
    lost: int


def _cidr_key(net: ipaddress.IPv4Network | str) -> dict:
    net = ipaddress.IPv4Network(net)
    return {"prefixlen": net.prefixlen, "addr": ip_be32(net.network_address)}


class Pinned:
    """One pinned map of a ``MapSet``, declared as a class attribute: opened
    from the set's directory on first use (BpfError(ENOENT) then when it is
    not pinned) and closed with the set."""

    def __init__(self, name: str, key: str, value: str, percpu: bool = False, optional: bool = False) -> None:
        self.name, self.key, self.value, self.percpu = name, key, value, percpu
        self.optional = optional  # older builds pinned none

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, maps: MapSet | None, owner: type | None = None) -> PinnedMap:
        if maps is None:
            return self  # type: ignore[return-value]
        if maps.closed:
            raise ValueError(f"{maps.dir}: the map set is closed")
        opened = maps.opened.get(self.attr)
        if opened is None:
            opened = maps.opened[self.attr] = PinnedMap(f"{maps.dir}/{self.name}", self.key, self.value,
                                                        self.percpu)
        return opened


class MapSet:
    """Pinned maps of one node's map directory, each opened when first used
    (a call that needs two of them opens two), all closed together."""

    def __init__(self, maps_dir: str) -> None:
        self.dir = maps_dir
        self.opened: dict[str, PinnedMap] = {}
        self.closed = False

    @classmethod
    def declared(cls) -> list[Pinned]:
        """The maps the set declares."""
        return [v for v in vars(cls).values() if isinstance(v, Pinned)]

    @classmethod
    def parse_layouts(cls) -> None:
        """Have cffi parse every declared map's key and value type now: it
        parses a type on its first use, ~0.5 ms each. The agent does this
        before it forks workers, so that no call pays for it."""
        for declared in cls.declared():
            L.pointer_type(declared.key)
            L.pointer_type(declared.value)

    def is_pinned(self, declared: Pinned) -> bool:
        """Whether the map ``declared`` (``Cls.attr``) is pinned, without
        opening it; OSError for what hides the answer (no permission)."""
        try:
            os.stat(f"{self.dir}/{declared.name}")
        except FileNotFoundError:
            return False
        return True

    def open_all(self) -> Self:
        """Open (and size-check) every declared map now: for the commands that
        report a missing or foreign map rather than fail on first use. On a
        failure the set is closed."""
        try:
            for declared in self.declared():
                if not declared.optional:
                    getattr(self, declared.attr)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for m in self.opened.values():
            m.close()
        self.opened.clear()
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Maps(MapSet):
    """The datapath maps of one node (but node policy's: ``PolicyMaps``)."""

    _endpoints = Pinned("endpoints", "__be32", "struct vnd_endpoint")
    _node = Pinned("node", "__u32", "struct vnd_node")
    _cidrs = Pinned("vnet_cidrs", "struct vnd_cidr_key", "__u8")
    _metrics = Pinned("metrics", "struct vnd_metrics_key", "struct vnd_metrics_val", percpu=True)
    _snat = Pinned("snat", "struct vnd_snat_key", "struct vnd_snat_val")
    _snat_quota = Pinned("snat_quota", "__be32", "struct vnd_snat_quota")
    _host_flows = Pinned("host_flows", "struct vnd_flow_key", "__u64")
    _bandwidth = Pinned("bandwidth", "__be32", "struct vnd_bandwidth")
    _monitor = Pinned("monitor", "__u32", "struct vnd_monitor", optional=True)

    # endpoints
    def endpoint(self, ip: ipaddress.IPv4Address | str) -> Endpoint | None:
        c = self._endpoints.get(ip_be32(ip))
        return Endpoint.from_c(c) if c is not None else None

    def put_endpoint(self, ip: ipaddress.IPv4Address | str, ep: Endpoint) -> None:
        self._endpoints.put(ip_be32(ip), ep.to_c())

    def delete_endpoint(self, ip: ipaddress.IPv4Address | str) -> bool:
        return self._endpoints.delete(ip_be32(ip))

    def endpoints(self) -> dict[ipaddress.IPv4Address, Endpoint]:
        return {ip_of(k): Endpoint.from_c(v) for k, v in self._endpoints.items()}

    def update_endpoint_flags(self, ip: ipaddress.IPv4Address | str, add: int = 0,
                              remove: int = 0) -> Endpoint | None:
        """Set the flags ``add`` and clear ``remove`` of an existing endpoint,
        keeping the rest (the datapath sets EP_HOST_FLOWS itself); the
        endpoint as written, None when there is none. A read-modify-write: a
        bit the datapath sets in between is lost, and set again by the next
        host-delivered packet."""
        c = self._endpoints.get(ip_be32(ip))
        if c is None:
            return None
        c.flags = (c.flags | add) & ~remove
        try:
            self._endpoints.put(ip_be32(ip), c, syscall.BPF_EXIST)
        except syscall.BpfError as e:
            if e.errno == errno.ENOENT:  # deleted in between
                return None
            raise
        return Endpoint.from_c(c)

    # rate limits (the endpoint's EP_BANDWIDTH flag makes the datapath read them)
    def bandwidth(self, ip: ipaddress.IPv4Address | str) -> Bandwidth | None:
        c = self._bandwidth.get(ip_be32(ip))
        return Bandwidth.from_c(c) if c is not None else None

    def put_bandwidth(self, ip: ipaddress.IPv4Address | str, bw: Bandwidth) -> None:
        """Write the pod's rates and bursts; the datapath's clocks restart (a full burst)."""
        self._bandwidth.put(ip_be32(ip), bw.to_c())

    def delete_bandwidth(self, ip: ipaddress.IPv4Address | str) -> bool:
        return self._bandwidth.delete(ip_be32(ip))

    def bandwidths(self) -> dict[ipaddress.IPv4Address, Bandwidth]:
        return {ip_of(k): Bandwidth.from_c(v) for k, v in self._bandwidth.items()}

    # node settings
    def node(self) -> Node | None:
        c = self._node.get(0)
        return Node.from_c(c) if c is not None and c.nic_ifindex else None

    def put_node(self, node: Node) -> None:
        self._node.put(0, node.to_c())

    # destination prefixes
    def put_cidr(self, net: ipaddress.IPv4Network | str, dest: Dest) -> None:
        self._cidrs.put(_cidr_key(net), int(dest))

    def delete_cidr(self, net: ipaddress.IPv4Network | str) -> bool:
        return self._cidrs.delete(_cidr_key(net))

    def cidrs(self) -> dict[ipaddress.IPv4Network, Dest]:
        return {ipaddress.IPv4Network((ip_of(k.addr), k.prefixlen)): Dest(v)
                for k, v in self._cidrs.items()}

    # SNAT connection table
    def snat_entries(self) -> list[SnatEntry]:
        return [SnatEntry.from_c(k, v) for k, v in self._snat.batch_items()]

    def delete_snat(self, entry: SnatEntry) -> bool:
        return self._snat.delete(entry.key())

    # translated flows per pod (the datapath counts up, the sweep recounts)
    def snat_quota(self, ip: ipaddress.IPv4Address | str) -> int:
        """The pod's counted flows; 0 when it has no count."""
        c = self._snat_quota.get(ip_be32(ip))
        return c.flows if c is not None else 0

    def put_snat_quota(self, ip: ipaddress.IPv4Address | str, flows: int) -> None:
        self._snat_quota.put(ip_be32(ip), {"flows": flows})

    def delete_snat_quota(self, ip: ipaddress.IPv4Address | str) -> bool:
        return self._snat_quota.delete(ip_be32(ip))

    def snat_quotas(self) -> dict[ipaddress.IPv4Address, int]:
        return {ip_of(k): v.flows for k, v in self._snat_quota.items()}

    # flows the host stack delivered to pods
    def host_flows(self) -> list[HostFlow]:
        return [HostFlow.from_c(k, v) for k, v in self._host_flows.batch_items()]

    def delete_host_flow(self, flow: HostFlow) -> bool:
        return self._host_flows.delete(flow.key())

    # the monitor switch (vnetdp monitor); BpfError(ENOENT) when the node's build pinned none
    def monitor(self) -> MonitorSwitch:
        c = self._monitor.get(0)
        return MonitorSwitch(c.flags, c.lost)

    def set_monitor(self, flags: int) -> MonitorSwitch:
        """Ask the datapath for the events ``flags`` names (0: none), keeping
        the lost count (an event lost while this writes is not counted)."""
        c = self._monitor.get(0)
        c.flags = flags
        self._monitor.put(0, c)
        return MonitorSwitch(c.flags, c.lost)

    # counters
    def metrics(self) -> list[Metric]:
        """Counters summed over CPUs."""
        return [Metric(k.ifindex, k.dir, k.reason, sum(v.packets for v in vals), sum(v.bytes for v in vals))
                for k, vals in self._metrics.items()]

    def forget_metrics(self, ifindex: int) -> None:
        """Drop the counters of a removed endpoint (its ifindex may be reused)."""
        self._delete_metrics(lambda key: key.ifindex == ifindex)

    def clear_metrics(self) -> None:
        """Drop every counter."""
        self._delete_metrics(lambda key: True)

    def _delete_metrics(self, which) -> None:
        for key in list(self._metrics.keys()):
            if which(key):
                self._metrics.delete(key)
