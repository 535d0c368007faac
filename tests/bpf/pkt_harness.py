"""What the packet-level tests share: the test node's constants, a run's
outcome, and readers of counters and checksums (fixtures are in conftest)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.l2 import Ether

from vnetdp.datapath import maps as M

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
HOW = {0: "drop", 1: "pass", 2: "egress", 3: "peer", 4: "qdisc"}
SNAT_TABLE_SIZE = 64  # entries in the test build: small enough to fill

# The test node: ifindex 1 (lo) is the pod veth the frames arrive on.
NIC_IFINDEX, NIC_MAC, GW_MAC = 2, "00:0d:3a:00:00:01", "12:34:56:78:9a:bc"
PRIMARY = "10.3.0.4"
POD_A = dict(ip="10.3.1.1", ep=M.Endpoint(1, "02:00:00:00:00:0a", "02:00:00:00:01:0a"))
POD_B = dict(ip="10.3.1.2", ep=M.Endpoint(7, "02:00:00:00:00:0b", "02:00:00:00:01:0b"))


# struct __sk_buff (uapi/linux/bpf.h, a stable layout): its size, and the
# offsets of the fields BPF_PROG_TEST_RUN takes in and gives back that the
# tests use.
SKB_SIZE, SKB_MARK, SKB_TSTAMP = 192, 8, 152


def skb_ctx(mark: int = 0, tstamp: int = 0) -> bytes:
    """A tc program's starting context: a zeroed struct __sk_buff with these fields."""
    ctx = bytearray(SKB_SIZE)
    struct.pack_into("<I", ctx, SKB_MARK, mark)
    struct.pack_into("<Q", ctx, SKB_TSTAMP, tstamp)
    return bytes(ctx)


def skb_fields(ctx: bytes) -> tuple[int, int]:
    """(mark, tstamp) of a struct __sk_buff a program ended with."""
    return struct.unpack_from("<I", ctx, SKB_MARK)[0], struct.unpack_from("<Q", ctx, SKB_TSTAMP)[0]


@dataclass
class Run:
    retval: int
    frame: Ether
    raw: bytes
    redirect_ifindex: int
    how: str
    mark: int = 0       # tc: the skb's mark and delivery time after the run
    tstamp: int = 0


def metric(maps: M.Maps, ifindex: int, reason: str) -> int:
    """Packets counted for (ifindex, reason)."""
    from vnetdp.datapath.reasons import by_name
    code = by_name(reason).code
    return sum(m.packets for m in maps.metrics() if m.ifindex == ifindex and m.reason == code)


def checksums_ok(frame: Ether) -> bool:
    """True when every checksum in the frame verifies: IPv4 header, TCP/UDP with
    the pseudo-header (a UDP zero means none), ICMP, and the IPv4 header an
    ICMP error quotes."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, in4_chksum
    from scapy.utils import checksum

    ip = frame[IP]
    raw = bytes(ip)
    ok = checksum(raw[:ip.ihl * 4]) == 0
    l4 = raw[ip.ihl * 4:ip.len]
    if TCP in ip or (UDP in ip and ip[UDP].chksum):
        ok &= in4_chksum(ip.proto, ip, l4) == 0
    if ICMP in ip:
        ok &= checksum(l4) == 0
        if IPerror in ip:
            inner = bytes(ip[IPerror])
            ok &= checksum(inner[:ip[IPerror].ihl * 4]) == 0
    return ok


def empty_pinned(path: str, key: str, value: str) -> None:
    """Delete every entry of the map pinned at ``path`` (one the typed map
    classes do not cover, such as a fragment table)."""
    pinned = M.PinnedMap(path, key, value)
    try:
        for k in list(pinned.keys()):
            pinned.delete(k)
    finally:
        pinned.close()
