"""Typed access to the pinned maps declared in ``bpf/lib/maps.h``.

The ctypes structs here mirror the C structs field for field (tests compare
their sizes with what bcc compiled). Maps are opened from their bpffs pins,
so reading or writing them never compiles anything.
"""
from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

from vnetdp.datapath import syscall

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
Mac = u8 * 6
Ipv4 = u8 * 4

NODE_LOCAL_SWITCHING = 1
NODE_SNAT = 2
EP_HOST_FLOWS = 1
SNAT_OUT, SNAT_IN = 0, 1
SNAT_CLOSING = 1


class Dest(IntEnum):
    """enum vnd_dest: what a prefix in the vnet_cidrs map means."""

    VNET = 1
    HOST = 2


class EndpointC(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("pod_mac", Mac), ("host_mac", Mac), ("flags", u32)]


class NodeC(ctypes.Structure):
    _fields_ = [("nic_ifindex", u32), ("nic_mac", Mac), ("gw_mac", Mac),
                ("primary_ip", Ipv4), ("snat_port_min", u16), ("snat_port_max", u16),
                ("flags", u32)]


class CidrKeyC(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("addr", Ipv4)]


class MetricsKeyC(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("dir", u8), ("reason", u8), ("pad", u16)]


class MetricsValC(ctypes.Structure):
    _fields_ = [("packets", u64), ("bytes", u64)]


class SnatKeyC(ctypes.Structure):
    _fields_ = [("saddr", Ipv4), ("daddr", Ipv4), ("sport", ctypes.c_uint16.__ctype_be__),
                ("dport", ctypes.c_uint16.__ctype_be__), ("proto", u8), ("dir", u8), ("pad", u16)]


class SnatValC(ctypes.Structure):
    _fields_ = [("last_seen", u64), ("addr", Ipv4), ("port", ctypes.c_uint16.__ctype_be__),
                ("flags", u8), ("pad", u8)]


class TraceC(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("how", u32)]


def mac_bytes(mac: str) -> Mac:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return Mac(*raw)


def mac_str(mac: Mac) -> str:
    return ":".join(f"{b:02x}" for b in bytes(mac))


def ip_bytes(ip: ipaddress.IPv4Address | str) -> Ipv4:
    return Ipv4(*ipaddress.IPv4Address(ip).packed)


def ip_of(raw: Ipv4) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes(raw))


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU maps hold one value slot for each."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    return sum(int(b) - int(a) + 1 if "-" in part else 1
               for part in text.split(",") for a, _, b in [part.partition("-")])


K = TypeVar("K", bound=ctypes.Structure)
V = TypeVar("V", bound=ctypes.Structure)


class PinnedMap(Generic[K, V]):
    """A pinned BPF map with ctypes keys and values (per-CPU values as lists)."""

    def __init__(self, path: str, key: type, value: type, percpu: bool = False) -> None:
        self.path = path
        self.key_type = key
        self.value_type = value
        self.percpu = percpu
        self.fd = syscall.obj_get(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buf(self) -> ctypes.Array | ctypes.Structure:
        if not self.percpu:
            return self.value_type()
        # The kernel lays per-CPU values out at 8-byte strides.
        stride = (ctypes.sizeof(self.value_type) + 7) // 8 * 8
        return (ctypes.c_uint8 * (stride * possible_cpus()))()

    def _values(self, buf) -> V | list[V]:
        if not self.percpu:
            return buf
        stride = len(buf) // possible_cpus()
        return [self.value_type.from_buffer_copy(bytes(buf)[i * stride:][:ctypes.sizeof(self.value_type)])
                for i in range(possible_cpus())]

    def get(self, key: K) -> V | list[V] | None:
        buf = self._value_buf()
        return self._values(buf) if syscall.map_lookup(self.fd, key, buf) else None

    def put(self, key: K, value: V, flags: int = syscall.BPF_ANY) -> None:
        syscall.map_update(self.fd, key, value, flags)

    def delete(self, key: K) -> bool:
        return syscall.map_delete(self.fd, key)

    def keys(self) -> Iterator[K]:
        prev, nxt = None, self.key_type()
        while syscall.map_next_key(self.fd, prev, nxt):
            yield self.key_type.from_buffer_copy(nxt)
            prev, nxt = self.key_type.from_buffer_copy(nxt), self.key_type()

    def items(self) -> Iterator[tuple[K, V | list[V]]]:
        for key in self.keys():
            value = self.get(key)
            if value is not None:  # deleted between next_key and lookup
                yield key, value


@dataclass(frozen=True)
class Endpoint:
    """One pod as the datapath sees it."""

    ifindex: int
    pod_mac: str
    host_mac: str
    flags: int = 0

    def to_c(self) -> EndpointC:
        return EndpointC(self.ifindex, mac_bytes(self.pod_mac), mac_bytes(self.host_mac), self.flags)

    @classmethod
    def from_c(cls, c: EndpointC) -> Endpoint:
        return cls(c.ifindex, mac_str(c.pod_mac), mac_str(c.host_mac), c.flags)


@dataclass(frozen=True)
class Node:
    """Node settings: the NIC, the fabric gateway's MAC, the primary IP."""

    nic_ifindex: int
    nic_mac: str
    gw_mac: str
    primary_ip: ipaddress.IPv4Address
    snat_port_min: int = 61000
    snat_port_max: int = 65535
    flags: int = NODE_LOCAL_SWITCHING | NODE_SNAT

    def to_c(self) -> NodeC:
        return NodeC(self.nic_ifindex, mac_bytes(self.nic_mac), mac_bytes(self.gw_mac),
                     ip_bytes(self.primary_ip), self.snat_port_min, self.snat_port_max, self.flags)

    @classmethod
    def from_c(cls, c: NodeC) -> Node:
        return cls(c.nic_ifindex, mac_str(c.nic_mac), mac_str(c.gw_mac), ip_of(c.primary_ip),
                   c.snat_port_min, c.snat_port_max, c.flags)


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
    flags: int

    def key(self) -> SnatKeyC:
        return SnatKeyC(ip_bytes(self.saddr), ip_bytes(self.daddr), self.sport, self.dport,
                        self.proto, self.direction, 0)

    @classmethod
    def from_c(cls, k: SnatKeyC, v: SnatValC) -> SnatEntry:
        return cls(k.dir, k.proto, ip_of(k.saddr), ip_of(k.daddr), k.sport, k.dport,
                   ip_of(v.addr), v.port, v.last_seen, v.flags)


@dataclass(frozen=True)
class Metric:
    ifindex: int
    direction: int
    reason: int
    packets: int
    bytes: int


class Maps:
    """All datapath maps of one node, opened from ``maps_dir``."""

    def __init__(self, maps_dir: str) -> None:
        self.dir = maps_dir
        self._endpoints = PinnedMap(f"{maps_dir}/endpoints", Ipv4, EndpointC)
        self._node = PinnedMap(f"{maps_dir}/node", u32, NodeC)
        self._cidrs = PinnedMap(f"{maps_dir}/vnet_cidrs", CidrKeyC, u8)
        self._metrics = PinnedMap(f"{maps_dir}/metrics", MetricsKeyC, MetricsValC, percpu=True)
        self._snat = PinnedMap(f"{maps_dir}/snat", SnatKeyC, SnatValC)

    def close(self) -> None:
        for m in (self._endpoints, self._node, self._cidrs, self._metrics, self._snat):
            m.close()

    def __enter__(self) -> Maps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # endpoints
    def endpoint(self, ip: ipaddress.IPv4Address | str) -> Endpoint | None:
        c = self._endpoints.get(ip_bytes(ip))
        return Endpoint.from_c(c) if c is not None else None

    def put_endpoint(self, ip: ipaddress.IPv4Address | str, ep: Endpoint) -> None:
        self._endpoints.put(ip_bytes(ip), ep.to_c())

    def delete_endpoint(self, ip: ipaddress.IPv4Address | str) -> bool:
        return self._endpoints.delete(ip_bytes(ip))

    def endpoints(self) -> dict[ipaddress.IPv4Address, Endpoint]:
        return {ip_of(k): Endpoint.from_c(v) for k, v in self._endpoints.items()}

    # node settings
    def node(self) -> Node | None:
        c = self._node.get(u32(0))
        return Node.from_c(c) if c is not None and c.nic_ifindex else None

    def put_node(self, node: Node) -> None:
        self._node.put(u32(0), node.to_c())

    # destination prefixes
    def put_cidr(self, net: ipaddress.IPv4Network | str, dest: Dest) -> None:
        net = ipaddress.IPv4Network(net)
        self._cidrs.put(CidrKeyC(net.prefixlen, ip_bytes(net.network_address)), u8(dest))

    def delete_cidr(self, net: ipaddress.IPv4Network | str) -> bool:
        net = ipaddress.IPv4Network(net)
        return self._cidrs.delete(CidrKeyC(net.prefixlen, ip_bytes(net.network_address)))

    def cidrs(self) -> dict[ipaddress.IPv4Network, Dest]:
        return {ipaddress.IPv4Network((ip_of(k.addr), k.prefixlen)): Dest(v.value)
                for k, v in self._cidrs.items()}

    # SNAT connection table
    def snat_entries(self) -> list[SnatEntry]:
        return [SnatEntry.from_c(k, v)
                for k, v in syscall.map_lookup_batch(self._snat.fd, SnatKeyC, SnatValC)]

    def delete_snat(self, entry: SnatEntry) -> bool:
        return self._snat.delete(entry.key())

    # counters
    def metrics(self) -> list[Metric]:
        """Counters summed over CPUs."""
        return [Metric(k.ifindex, k.dir, k.reason, sum(v.packets for v in vals), sum(v.bytes for v in vals))
                for k, vals in self._metrics.items()]

    def forget_metrics(self, ifindex: int) -> None:
        """Drop the counters of a removed endpoint (its ifindex may be reused)."""
        for key in list(self._metrics.keys()):
            if key.ifindex == ifindex:
                self._metrics.delete(key)
