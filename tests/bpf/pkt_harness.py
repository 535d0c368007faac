"""What the packet-level tests share: the test node's constants, a run's
outcome, and readers of counters and checksums (fixtures are in conftest)."""
from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.l2 import Ether

from vnetdp.datapath import maps as M

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
HOW = {0: "drop", 1: "pass", 2: "egress", 3: "peer"}
SNAT_TABLE_SIZE = 64  # entries in the test build: small enough to fill

# The test node: ifindex 1 (lo) is the pod veth the frames arrive on.
NIC_IFINDEX, NIC_MAC, GW_MAC = 2, "00:0d:3a:00:00:01", "12:34:56:78:9a:bc"
PRIMARY = "10.3.0.4"
POD_A = dict(ip="10.3.1.1", ep=M.Endpoint(1, "02:00:00:00:00:0a", "02:00:00:00:01:0a"))
POD_B = dict(ip="10.3.1.2", ep=M.Endpoint(7, "02:00:00:00:00:0b", "02:00:00:00:01:0b"))


@dataclass
class Run:
    retval: int
    frame: Ether
    raw: bytes
    redirect_ifindex: int
    how: str


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
