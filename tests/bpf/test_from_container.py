"""from_container (tc ingress on a pod's host veth) on scapy frames."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from pkt_harness import (GW_MAC, checksums_ok, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK,
                      TC_ACT_REDIRECT, TC_ACT_SHOT, metric)

A, B = POD_A["ep"], POD_B["ep"]


def from_a(dst: str, src: str = POD_A["ip"], mac: str = A.pod_mac, ttl: int = 64):
    return Ether(src=mac, dst=A.host_mac) / IP(src=src, dst=dst, ttl=ttl) / TCP(sport=40000, dport=80)


def test_pod_to_vnet_leaves_nic_with_nic_and_gateway_macs(maps, run):
    r = run("from_container", from_a("10.3.0.100"))
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert (r.frame.src, r.frame.dst) == (NIC_MAC, GW_MAC)
    assert (r.frame[IP].src, r.frame[IP].dst) == (POD_A["ip"], "10.3.0.100")
    assert r.frame[IP].ttl == 63
    assert checksums_ok(r.frame)
    assert metric(maps, A.ifindex, "FWD_VNET") == 1


def test_pod_to_local_pod_is_switched_into_its_peer(maps, run):
    r = run("from_container", from_a(POD_B["ip"]))
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (B.ifindex, "peer")
    assert (r.frame.src, r.frame.dst) == (B.host_mac, B.pod_mac)
    assert metric(maps, A.ifindex, "FWD_LOCAL") == 1


def test_local_switching_off_sends_pod_traffic_through_the_fabric(maps, run):
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, "flags": 0}))
    r = run("from_container", from_a(POD_B["ip"]))
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert (r.frame.src, r.frame.dst) == (NIC_MAC, GW_MAC)


def test_pod_to_host_primary_ip_goes_to_host_stack_untouched(maps, run):
    frame = from_a(PRIMARY)
    r = run("from_container", frame)
    assert r.retval == TC_ACT_OK
    assert r.raw == bytes(frame)
    assert metric(maps, A.ifindex, "FWD_HOST") == 1


@pytest.mark.parametrize("src,mac,reason", [
    ("10.3.1.99", A.pod_mac, "DROP_SPOOF_IP"),       # an address nobody owns
    (POD_B["ip"], B.pod_mac, "DROP_SPOOF_IP"),       # another endpoint's address and MAC
    (POD_A["ip"], "02:66:66:66:66:66", "DROP_SPOOF_MAC"),  # own address, foreign MAC
], ids=["unknown-ip", "other-endpoint", "foreign-mac"])
def test_spoofed_source_is_dropped_and_counted(maps, run, src, mac, reason):
    r = run("from_container", from_a("10.3.0.100", src=src, mac=mac))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, reason) == 1


def test_arp_request_from_pod_is_answered_with_host_mac(maps, run):
    req = Ether(src=A.pod_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=A.pod_mac, psrc=POD_A["ip"], pdst="169.254.1.1")
    r = run("from_container", req)
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (A.ifindex, "egress")  # back out to the pod
    arp = r.frame[ARP]
    assert arp.op == 2
    assert (arp.hwsrc, arp.psrc) == (A.host_mac, "169.254.1.1")
    assert (arp.hwdst, arp.pdst) == (A.pod_mac, POD_A["ip"])
    assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
    assert metric(maps, A.ifindex, "FWD_ARP_REPLY") == 1


def test_arp_with_spoofed_sender_is_dropped(maps, run):
    req = Ether(src=A.pod_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=A.pod_mac, psrc="10.3.1.77", pdst="169.254.1.1")
    assert run("from_container", req).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SPOOF_IP") == 1


def test_non_ipv4_from_pod_is_dropped(maps, run):
    frame = Ether(src=A.pod_mac, dst=A.host_mac) / IPv6(src="fe80::1", dst="ff02::2") / ICMP()
    r = run("from_container", frame)
    assert r.retval == TC_ACT_SHOT
    assert r.how == "drop"
    assert metric(maps, A.ifindex, "DROP_UNSUPPORTED_L3") == 1


# BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IPv4 header, so
# truncation is tested where the kernel lets it through: IHL claiming options
# past the end, a bad version, and an ARP body cut short.
def test_ihl_past_end_of_frame_is_dropped_not_forwarded(maps, run):
    frame = bytearray(bytes(Ether(src=A.pod_mac) / IP(src=POD_A["ip"], dst=POD_B["ip"])))
    frame[14] = 0x4F  # IHL 15: 60 bytes of header in a 20-byte packet
    r = run("from_container", bytes(frame))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1


def test_bad_ip_version_is_dropped(maps, run):
    frame = bytearray(bytes(from_a(POD_B["ip"])))
    frame[14] = 0x65
    assert run("from_container", bytes(frame)).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1


def test_truncated_arp_is_dropped(maps, run):
    req = bytes(Ether(src=A.pod_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=A.pod_mac, psrc=POD_A["ip"], pdst="169.254.1.1"))[:14 + 20]
    assert run("from_container", req).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1


def test_ttl_one_is_not_forwarded(maps, run):
    r = run("from_container", from_a(POD_B["ip"], ttl=1))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_TTL_EXCEEDED") == 1


def test_unconfigured_node_drops(maps, run):
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, "nic_ifindex": 0}))
    assert run("from_container", from_a("10.3.0.100")).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_NO_NODE_CONFIG") == 1
