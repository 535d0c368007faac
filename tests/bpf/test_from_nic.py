"""from_nic (tc) and from_nic_xdp on scapy frames: the same logic at two hooks."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from pkt_harness import (GW_MAC, NIC_MAC, POD_A, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
                      XDP_DROP, XDP_PASS, XDP_REDIRECT, checksums_ok, metric)

A = POD_A["ep"]
HOOKS = {  # program -> (pass, redirect, drop, how a pod is entered)
    "from_nic": (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, "peer"),
    "from_nic_xdp": (XDP_PASS, XDP_REDIRECT, XDP_DROP, "peer"),
}


def from_fabric(dst: str, ttl: int = 63):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src="10.3.0.100", dst=dst, ttl=ttl) / UDP(sport=5000, dport=53)


@pytest.mark.parametrize("prog", HOOKS)
def test_frame_for_local_pod_goes_into_the_pod_with_pod_macs(maps, run, prog):
    _, redirect, _, how = HOOKS[prog]
    r = run(prog, from_fabric(POD_A["ip"]))
    assert r.retval == redirect
    assert (r.redirect_ifindex, r.how) == (A.ifindex, how)
    assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
    assert (r.frame[IP].src, r.frame[IP].dst, r.frame[IP].ttl) == ("10.3.0.100", POD_A["ip"], 62)
    assert checksums_ok(r.frame)
    assert metric(maps, A.ifindex, "FWD_TO_POD") == 1


@pytest.mark.parametrize("prog", HOOKS)
@pytest.mark.parametrize("frame", [
    from_fabric(PRIMARY),                                  # the host's own traffic
    from_fabric("10.3.1.200"),                             # an address with no pod
    Ether(src=GW_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="10.3.0.1", pdst=PRIMARY),
    Ether(src=GW_MAC, dst=NIC_MAC) / Dot1Q(vlan=5) / IP(dst=POD_A["ip"]) / UDP(),  # VLAN tag
], ids=["host", "unknown-pod", "arp", "vlan"])
def test_everything_else_reaches_the_host_untouched(maps, run, prog, frame):
    passed = HOOKS[prog][0]
    r = run(prog, frame)
    assert r.retval == passed
    assert r.raw == bytes(frame)
    assert r.how == "pass"
    assert metric(maps, A.ifindex, "FWD_TO_POD") == 0


@pytest.mark.parametrize("prog", HOOKS)
def test_ttl_expiring_frame_for_pod_is_dropped(maps, run, prog):
    drop = HOOKS[prog][2]
    assert run(prog, from_fabric(POD_A["ip"], ttl=1)).retval == drop
    assert metric(maps, A.ifindex, "DROP_TTL_EXCEEDED") == 1


@pytest.mark.parametrize("prog", HOOKS)
def test_malformed_ipv4_for_pod_passes_to_host_not_into_pod(maps, run, prog):
    frame = bytearray(bytes(from_fabric(POD_A["ip"])))
    frame[14] = 0x4F  # IHL beyond the packet
    r = run(prog, bytes(frame))
    assert r.retval == HOOKS[prog][0]
    assert r.how == "pass"
