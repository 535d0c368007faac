"""A pod whose address has a public IP of its own (endpoint flag
EP_PUBLIC_IP) on scapy frames: its traffic beyond the VNet leaves
untranslated (FWD_PUBLIC_IP; the fabric maps it to the public IP), whatever
SNAT would have done to it; everything else it sends, and what it receives,
is as for any pod."""
from __future__ import annotations

import dataclasses

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from pkt_harness import GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, TC_ACT_REDIRECT, checksums_ok, metric
from test_snat import INET, from_inet, from_pod, set_node
from vnetdp.datapath import maps as M

A = POD_A["ep"]


@pytest.fixture
def public_a(maps: M.Maps) -> M.Maps:
    """The test node with pod A's address flagged as having a public IP."""
    maps.put_endpoint(POD_A["ip"], dataclasses.replace(A, flags=M.EP_PUBLIC_IP))
    return maps


LEAVING = {   # (what follows the IPv4 header, IPv4 fields)
    "tcp-syn": (TCP(sport=40000, dport=80, flags="S"), {}),
    "udp": (UDP(sport=40001, dport=53) / b"query", {}),
    "icmp-echo": (ICMP(type=8, id=0x1234, seq=1) / b"ping", {}),
    "gre": (b"\x00\x00\x08\x00", {"proto": 47}),   # what SNAT refuses (DROP_SNAT_UNSUPPORTED)
}


@pytest.mark.parametrize("l4,ip", LEAVING.values(), ids=LEAVING.keys())
def test_traffic_beyond_the_vnet_leaves_untranslated_to_the_gateway(public_a, run, l4, ip):
    frame = from_pod(l4, **ip)
    r = run("from_container", frame)
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert (r.frame.src, r.frame.dst) == (NIC_MAC, GW_MAC)
    assert (r.frame[IP].src, r.frame[IP].dst, r.frame[IP].ttl) == (POD_A["ip"], INET, frame[IP].ttl - 1)
    assert bytes(r.frame[IP].payload) == bytes(frame[IP].payload)
    assert checksums_ok(r.frame)
    assert metric(public_a, A.ifindex, "FWD_PUBLIC_IP") == 1
    assert metric(public_a, A.ifindex, "FWD_SNAT") == 0
    assert public_a.snat_entries() == [] and public_a.snat_quota(POD_A["ip"]) == 0


def test_a_later_fragment_leaves_untranslated_too(public_a, run):
    r = run("from_container", from_pod(UDP(sport=40000, dport=53) / (b"x" * 16), flags=0, frag=185))
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert r.frame[IP].src == POD_A["ip"]
    assert metric(public_a, A.ifindex, "FWD_PUBLIC_IP") == 1


def test_with_snat_off_on_the_node_it_is_still_counted_as_public(public_a, run):
    set_node(public_a, flags=M.NODE_LOCAL_SWITCHING)
    run("from_container", from_pod(UDP(sport=40000, dport=53)))
    assert metric(public_a, A.ifindex, "FWD_PUBLIC_IP") == 1
    assert metric(public_a, A.ifindex, "FWD_UNTRANSLATED") == 0


def test_vnet_traffic_is_unchanged(public_a, run):
    r = run("from_container", from_pod(UDP(sport=40000, dport=53), dst="10.3.0.100"))
    assert (r.redirect_ifindex, r.frame[IP].src) == (NIC_IFINDEX, POD_A["ip"])
    assert metric(public_a, A.ifindex, "FWD_VNET") == 1
    assert metric(public_a, A.ifindex, "FWD_PUBLIC_IP") == 0


def test_the_flag_is_per_endpoint_without_it_the_pod_is_translated(public_a, run):
    public_a.update_endpoint_flags(POD_A["ip"], remove=M.EP_PUBLIC_IP)
    r = run("from_container", from_pod(TCP(sport=40000, dport=80, flags="S")))
    assert r.frame[IP].src != POD_A["ip"]
    assert metric(public_a, A.ifindex, "FWD_SNAT") == 1


@pytest.mark.parametrize("prog", ["from_nic", "from_nic_xdp"])
def test_the_internet_reaches_it_at_its_own_address(public_a, run, prog):
    """What the fabric translated in to the pod's address (an inbound
    connection to its public IP, a reply to its outbound traffic) goes in."""
    r = run(prog, from_inet(TCP(sport=80, dport=40000, flags="SA"), dst=POD_A["ip"]))
    assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")
    assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
    assert (r.frame[IP].src, r.frame[IP].dst) == (INET, POD_A["ip"])
    assert metric(public_a, A.ifindex, "FWD_TO_POD") == 1
