"""Hostile and odd input (SPEC §5): VLAN tags, martian and cloud-service
destinations, inconsistent lengths, and fragments that look like headers.

Nothing a pod sends of these may leave the node, and nothing the NIC hands us
of these may be translated or forwarded into a pod."""
from __future__ import annotations

import os
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK,
                      TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, checksums_ok,
                      metric)
from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall

A = POD_A["ep"]
INET = "198.18.0.1"
ROUTER = "203.0.113.9"
HOST_AGENT, METADATA = "168.63.129.16", "169.254.169.254"
NIC_HOOKS = {  # program -> (pass, redirect, drop)
    "from_nic": (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT),
    "from_nic_xdp": (XDP_PASS, XDP_REDIRECT, XDP_DROP),
}
SNAT_ON = M.NODE_LOCAL_SWITCHING | M.NODE_SNAT


def set_flags(maps: M.Maps, flags: int) -> None:
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, "flags": flags}))


def eth_frame(src: str, dst: str, l3) -> bytes:
    """l3 is a scapy layer, or the raw bytes of an IPv4 packet."""
    eth = Ether(src=src, dst=dst, type=0x0800) if isinstance(l3, bytes) else Ether(src=src, dst=dst)
    return bytes(eth / l3)


def from_pod(l3) -> bytes:
    return eth_frame(A.pod_mac, A.host_mac, l3)


def from_inet(l3) -> bytes:
    return eth_frame(GW_MAC, NIC_MAC, l3)


def out_port(maps: M.Maps) -> int:
    [entry] = [e for e in maps.snat_entries() if e.direction == M.SNAT_OUT]
    return entry.port


def assert_passed_untouched(maps, r, prog, frame: bytes) -> None:
    assert (r.retval, r.how) == (NIC_HOOKS[prog][0], "pass")
    assert r.raw == frame
    assert metric(maps, A.ifindex, "PASS_NIC") == 1
    for into_pod in ("FWD_TO_POD", "FWD_SNAT_REPLY", "FWD_SNAT_ICMP_ERROR"):
        assert metric(maps, A.ifindex, into_pod) == 0


# --- 6. VLAN tags -----------------------------------------------------------
# Only in-band tags can be tested here: BPF_PROG_TEST_RUN cannot hand a program
# an skb whose tag the NIC or the stack took out (skb->vlan_present), which is
# how tc usually sees them. The lab tests cover that form.

TAGS = {
    "802.1q": lambda: Dot1Q(vlan=5),
    "priority-tag": lambda: Dot1Q(vlan=0, prio=5),
    "802.1ad": lambda: Dot1AD(vlan=5),
    "qinq": lambda: Dot1AD(vlan=5) / Dot1Q(vlan=6),
}
POD_PAYLOADS = {
    "to-vnet": lambda: IP(src=POD_A["ip"], dst="10.3.0.100") / UDP(sport=40000, dport=53),
    "to-pod": lambda: IP(src=POD_A["ip"], dst=POD_B["ip"]) / TCP(sport=40000, dport=80),
    "to-outside": lambda: IP(src=POD_A["ip"], dst=INET) / UDP(sport=40000, dport=53),
    "arp": lambda: ARP(op=1, hwsrc=A.pod_mac, psrc=POD_A["ip"], pdst="169.254.1.1"),
}


@pytest.mark.parametrize("payload", POD_PAYLOADS, ids=POD_PAYLOADS)
@pytest.mark.parametrize("tag", TAGS, ids=TAGS)
def test_tagged_frame_from_pod_is_dropped_and_counted(maps, run, tag, payload):
    r = run("from_container", from_pod(TAGS[tag]() / POD_PAYLOADS[payload]()))
    assert (r.retval, r.how) == (TC_ACT_SHOT, "drop")
    assert metric(maps, A.ifindex, "DROP_VLAN") == 1
    assert maps.snat_entries() == []


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("dst", ["pod", "snat-reply"])
@pytest.mark.parametrize("tag", TAGS, ids=TAGS)
def test_tagged_frame_from_nic_goes_to_host_untouched(maps, run, prog, dst, tag):
    if dst == "pod":
        l3 = IP(src="10.3.0.100", dst=POD_A["ip"]) / UDP(sport=5000, dport=53)
    else:
        run("from_container", from_pod(IP(src=POD_A["ip"], dst=INET) / UDP(sport=40000, dport=53)))
        l3 = IP(src=INET, dst=PRIMARY) / UDP(sport=53, dport=out_port(maps))
    frame = bytes(Ether(src=GW_MAC, dst=NIC_MAC) / TAGS[tag]() / l3)
    assert_passed_untouched(maps, run(prog, frame), prog, frame)


# --- 7. Destinations no pod may reach ---------------------------------------

MARTIANS = ["0.0.0.0", "0.255.255.255", "127.0.0.1", "127.255.255.254", "224.0.0.1",
            "239.255.255.250", "240.0.0.1", "255.255.255.254", "255.255.255.255"]
NOT_MARTIANS = ["1.0.0.1", "126.255.255.255", "128.0.0.1", "223.255.255.255"]
L4 = {
    "udp": lambda: UDP(sport=40000, dport=53),
    "tcp": lambda: TCP(sport=40000, dport=80, flags="S"),
    "icmp-echo": lambda: ICMP(type=8, id=0x1234),
}
NODES = {"snat": SNAT_ON, "no-snat": M.NODE_LOCAL_SWITCHING}


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("l4", L4)
@pytest.mark.parametrize("dst", MARTIANS)
def test_martian_destination_is_dropped_before_translation(maps, run, node, l4, dst):
    set_flags(maps, NODES[node])
    r = run("from_container", from_pod(IP(src=POD_A["ip"], dst=dst) / L4[l4]()))
    assert (r.retval, r.how) == (TC_ACT_SHOT, "drop")
    assert metric(maps, A.ifindex, "DROP_MARTIAN") == 1
    assert maps.snat_entries() == []


@pytest.mark.parametrize("dst", NOT_MARTIANS)
def test_addresses_next_to_martian_ranges_are_translated(maps, run, dst):
    set_flags(maps, SNAT_ON)
    r = run("from_container", from_pod(IP(src=POD_A["ip"], dst=dst) / UDP(sport=40000, dport=53)))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    assert metric(maps, A.ifindex, "FWD_SNAT") == 1


# The host agent's services; the same address also serves DNS and sends load
# balancer health probes, which pods must keep (probe replies come from the
# pod's port to the probe's).
HOST_AGENT_SERVICES = {
    "wireserver": lambda: TCP(sport=40000, dport=80, flags="S"),
    "wireserver-established": lambda: TCP(sport=40000, dport=80, flags="PA") / b"GET /",
    "guest-agent-plugin": lambda: TCP(sport=40000, dport=32526, flags="S"),
}
HOST_AGENT_OTHER = {
    "dns-udp": lambda: UDP(sport=40000, dport=53),
    "dns-tcp": lambda: TCP(sport=40000, dport=53, flags="S"),
    "probe-reply": lambda: TCP(sport=8080, dport=50000, flags="SA"),
    "ping": lambda: ICMP(type=8, id=0x1234),
}
SERVICES = {
    "host-agent": (HOST_AGENT, M.NODE_ALLOW_HOST_AGENT, "DROP_HOST_AGENT", HOST_AGENT_SERVICES),
    "metadata": (METADATA, M.NODE_ALLOW_METADATA, "DROP_METADATA",
                 {"http": lambda: TCP(sport=40000, dport=80, flags="S"), **L4}),
}
SERVICE_CASES = [(s, l4) for s, (_, _, _, l4s) in SERVICES.items() for l4 in l4s]


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("service,l4", SERVICE_CASES)
def test_cloud_service_is_dropped_from_pods_without_its_node_flag(maps, run, node, service, l4):
    dst, allow, reason, l4s = SERVICES[service]
    other = M.NODE_ALLOW_METADATA if allow == M.NODE_ALLOW_HOST_AGENT else M.NODE_ALLOW_HOST_AGENT
    set_flags(maps, NODES[node] | other)   # the other service's flag changes nothing
    r = run("from_container", from_pod(IP(src=POD_A["ip"], dst=dst) / l4s[l4]()))
    assert (r.retval, r.how) == (TC_ACT_SHOT, "drop")
    assert metric(maps, A.ifindex, reason) == 1
    assert maps.snat_entries() == []


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("service,l4", SERVICE_CASES)
def test_cloud_service_is_reached_with_its_node_flag(maps, run, node, service, l4):
    dst, allow, _, l4s = SERVICES[service]
    set_flags(maps, NODES[node] | allow)
    r = run("from_container", from_pod(IP(src=POD_A["ip"], dst=dst) / l4s[l4]()))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    assert r.frame[IP].src == (PRIMARY if node == "snat" else POD_A["ip"])


@pytest.mark.parametrize("l4", HOST_AGENT_OTHER)
def test_host_agent_address_keeps_dns_and_probe_replies_without_the_flag(maps, run, l4):
    set_flags(maps, SNAT_ON)
    r = run("from_container", from_pod(IP(src=POD_A["ip"], dst=HOST_AGENT) / HOST_AGENT_OTHER[l4]()))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    assert metric(maps, A.ifindex, "DROP_HOST_AGENT") == 0


# --- 8. Lengths that do not hold together ------------------------------------
# Each builds (IP packet bytes, then bytes after it in the frame) from the
# addresses and the ports (ICMP: the echo id is the port on our side). Headers
# cut short are followed by padding, as on a minimum-size Ethernet frame: it
# must not be read as the rest of the header.

PAD = b"\x00" * 26


def _tcp(s, d, **kw):
    return TCP(sport=s, dport=d, flags="A", **kw)


def _cut(a, proto, l4: bytes, keep: int) -> bytes:
    return bytes(IP(proto=proto, len=20 + keep, **a) / l4[:keep]) + PAD


def _echo(s, d, inbound):
    return ICMP(type=0, id=d) if inbound else ICMP(type=8, id=s)


MALFORMED = {  # name -> (flow protocol, builder(addresses, sport, dport, inbound))
    "tot-len-zero": ("tcp", lambda a, s, d, i: bytes(IP(len=0, **a) / _tcp(s, d))),
    "tot-len-below-header": ("tcp", lambda a, s, d, i: bytes(IP(len=19, **a) / _tcp(s, d))),
    "tot-len-below-options": ("tcp", lambda a, s, d, i: bytes(IP(
        len=23, options=[IPOption_NOP()] * 3 + [IPOption_EOL()], **a) / _tcp(s, d))),
    "tot-len-past-frame": ("tcp", lambda a, s, d, i: bytes(IP(len=41, **a) / _tcp(s, d))),
    "tot-len-past-padded-frame": ("tcp", lambda a, s, d, i: bytes(IP(len=41 + 26, **a) / _tcp(s, d)) + PAD),
    "tot-len-max": ("tcp", lambda a, s, d, i: bytes(IP(len=65535, **a) / _tcp(s, d))),
    "tcp-doff-0": ("tcp", lambda a, s, d, i: bytes(IP(**a) / _tcp(s, d, dataofs=0))),
    "tcp-doff-4": ("tcp", lambda a, s, d, i: bytes(IP(**a) / _tcp(s, d, dataofs=4))),
    "tcp-doff-past-packet": ("tcp", lambda a, s, d, i: bytes(IP(**a) / _tcp(s, d, dataofs=6))),
    "tcp-doff-past-packet-into-padding": ("tcp", lambda a, s, d, i: bytes(
        IP(**a) / _tcp(s, d, dataofs=15) / (b"x" * 20)) + PAD),
    "tcp-header-cut": ("tcp", lambda a, s, d, i: _cut(a, 6, bytes(_tcp(s, d)), 14)),
    "udp-len-0": ("udp", lambda a, s, d, i: bytes(IP(**a) / UDP(sport=s, dport=d, len=0) / b"query")),
    "udp-len-7": ("udp", lambda a, s, d, i: bytes(IP(**a) / UDP(sport=s, dport=d, len=7) / b"query")),
    "udp-len-past-packet": ("udp", lambda a, s, d, i: bytes(
        IP(**a) / UDP(sport=s, dport=d, len=14) / b"query") + PAD),
    "udp-header-cut": ("udp", lambda a, s, d, i: _cut(a, 17, bytes(UDP(sport=s, dport=d)), 6)),
    "icmp-header-cut": ("icmp", lambda a, s, d, i: _cut(a, 1, bytes(_echo(s, d, i)), 6)),
}
FLOWS = {  # protocol -> the valid packet from the pod that opens the flow
    "tcp": lambda: TCP(sport=40000, dport=80, flags="S"),
    "udp": lambda: UDP(sport=40000, dport=80),
    "icmp": lambda: ICMP(type=8, id=40000),
}
POD_PATHS = {  # destination -> node flags
    POD_B["ip"]: SNAT_ON,                          # local pod
    "10.3.0.100": SNAT_ON,                         # the VNet
    PRIMARY: SNAT_ON,                              # the host
    INET: SNAT_ON,                                 # outside, translated
    "198.18.0.2": M.NODE_LOCAL_SWITCHING,          # outside, SNAT off
}


@pytest.mark.parametrize("dst", POD_PATHS, ids=["local-pod", "vnet", "host", "snat", "no-snat"])
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_lengths_from_pod_are_dropped_on_every_path(maps, run, kind, dst):
    set_flags(maps, POD_PATHS[dst])
    packet = MALFORMED[kind][1](dict(src=POD_A["ip"], dst=dst), 40000, 80, False)
    r = run("from_container", from_pod(packet))
    assert (r.retval, r.how) == (TC_ACT_SHOT, "drop")
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1
    assert maps.snat_entries() == []


# Consistent packets that a too-strict check would refuse.
WELL_FORMED = {
    "padded-frame": lambda a: bytes(IP(**a) / UDP(sport=40000, dport=53) / b"q") + PAD,
    "ip-options": lambda a: bytes(IP(options=[IPOption_NOP()] * 3 + [IPOption_EOL()], **a) /
                                  TCP(sport=40000, dport=80, flags="S")),
    "tcp-options": lambda a: bytes(IP(**a) / TCP(sport=40000, dport=80, flags="S",
                                                 options=[("MSS", 1460), ("NOP", None)])),
    "udp-shorter-than-packet": lambda a: bytes(IP(**a) / UDP(sport=40000, dport=53, len=9) / b"qq"),
}


@pytest.mark.parametrize("dst", POD_PATHS, ids=["local-pod", "vnet", "host", "snat", "no-snat"])
@pytest.mark.parametrize("kind", WELL_FORMED)
def test_well_formed_odd_packets_from_pod_are_forwarded(maps, run, kind, dst):
    set_flags(maps, POD_PATHS[dst])
    r = run("from_container", from_pod(WELL_FORMED[kind](dict(src=POD_A["ip"], dst=dst))))
    assert r.retval in (TC_ACT_OK, TC_ACT_REDIRECT)
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 0
    if r.retval == TC_ACT_REDIRECT:
        assert checksums_ok(r.frame)


@pytest.mark.parametrize("frag", [dict(flags="MF"), dict(frag=100)], ids=["first", "later"])
def test_fragments_from_pod_are_not_malformed(maps, run, frag):
    """A first fragment's UDP length covers the whole datagram; a later one has no header."""
    a = dict(src=POD_A["ip"], dst="10.3.0.100", **frag)
    udp = UDP(sport=40000, dport=53, len=1400) / (b"x" * 64) if "flags" in frag else b"\x00\x01" * 3
    r = run("from_container", from_pod(IP(proto=17, **a) / udp))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    assert metric(maps, A.ifindex, "FWD_VNET") == 1


# __sk_buff up to gso_size (uapi/linux/bpf.h: a stable layout), gso_size last.
SKB_GSO_SIZE_OFFSET = 176


def test_big_tcp_gso_packet_with_tot_len_zero_is_forwarded(maps, datapath):
    """BIG TCP: a GSO packet over 64 KiB carries tot_len 0 (the kernel's iph_totlen())."""
    frame = from_pod(IP(src=POD_A["ip"], dst="10.3.0.100", len=0) / TCP(sport=40000, dport=80) / (b"x" * 100))
    ctx = bytes(SKB_GSO_SIZE_OFFSET) + struct.pack("<I", 1400)
    fd = datapath.prog_fd("from_container")
    try:
        retval, _, _ = syscall.prog_test_run(fd, frame, ctx=ctx)
    finally:
        os.close(fd)
    assert retval == TC_ACT_REDIRECT
    assert metric(maps, A.ifindex, "FWD_VNET") == 1


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_lengths_for_a_pod_are_not_forwarded_into_it(maps, run, prog, kind):
    packet = MALFORMED[kind][1](dict(src="10.3.0.100", dst=POD_A["ip"]), 5000, 53, False)
    r = run(prog, from_inet(packet))
    assert r.retval == NIC_HOOKS[prog][2]
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1
    assert metric(maps, A.ifindex, "FWD_TO_POD") == 0


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_reply_of_a_translated_flow_is_not_translated(maps, run, prog, kind):
    proto, build = MALFORMED[kind]
    run("from_container", from_pod(IP(src=POD_A["ip"], dst=INET) / FLOWS[proto]()))
    entries = maps.snat_entries()
    r = run(prog, from_inet(build(dict(src=INET, dst=PRIMARY), 80, out_port(maps), True)))
    assert r.retval == NIC_HOOKS[prog][2]
    assert metric(maps, A.ifindex, "DROP_MALFORMED") == 1
    assert metric(maps, A.ifindex, "FWD_SNAT_REPLY") == 0
    assert maps.snat_entries() == entries


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_lengths_not_for_a_pod_reach_the_host_untouched(maps, run, prog, kind):
    frame = from_inet(MALFORMED[kind][1](dict(src="10.3.0.100", dst="10.3.1.200"), 5000, 53, False))
    assert_passed_untouched(maps, run(prog, frame), prog, frame)


# --- 9. Later fragments are data ---------------------------------------------

QUOTED = {  # the flow, and the ICMP error about its translated packet
    "udp-port-unreachable": (lambda: UDP(sport=40000, dport=33434), 3, 3),
    "tcp-frag-needed": (lambda: TCP(sport=40000, dport=443, flags="S"), 3, 4),
    "echo-time-exceeded": (lambda: ICMP(type=8, id=0x4242, seq=7), 11, 0),
}
LATER = {"offset-1-more": dict(frag=1, flags="MF"), "offset-185-more": dict(frag=185, flags="MF"),
         "offset-185-last": dict(frag=185), "offset-max-last": dict(frag=8191)}
ERROR_SHAPES = {  # name -> (outer IPv4 fields, fragment offset written into the quote)
    **{f"later-fragment-{name}": (frag, 0) for name, frag in LATER.items()},
    # Its later fragments reach the host, so the pod could never reassemble it.
    "first-fragment": (dict(flags="MF"), 0),
    # Whole, but what follows the quoted header is data, not the flow's ports.
    "quoting-a-later-fragment": ({}, 185),
}


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("shape", ERROR_SHAPES.values(), ids=ERROR_SHAPES)
@pytest.mark.parametrize("quoted", QUOTED.values(), ids=QUOTED)
def test_fragment_shaped_as_icmp_error_for_a_live_flow_is_not_translated(maps, run, prog, quoted, shape):
    (l4, icmp_type, code), (outer, quoted_offset) = quoted, shape
    inner = run("from_container", from_pod(IP(src=POD_A["ip"], dst=INET) / l4())).frame[IP]
    if quoted_offset:
        inner.frag, inner.chksum = quoted_offset, None
    error = ICMP(type=icmp_type, code=code, nexthopmtu=1400 if code == 4 else 0) / bytes(inner)[:28]
    frame = from_inet(IP(src=ROUTER, dst=PRIMARY, proto=1, **outer) / bytes(error))
    assert_passed_untouched(maps, run(prog, frame), prog, frame)


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("frag", LATER.values(), ids=LATER)
@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_later_fragment_shaped_as_a_reply_is_not_translated(maps, run, prog, proto, frag):
    run("from_container", from_pod(IP(src=POD_A["ip"], dst=INET) / FLOWS[proto]()))
    port = out_port(maps)
    number, reply = {"tcp": (6, TCP(sport=80, dport=port, flags="SA")),
                     "udp": (17, UDP(sport=80, dport=port)), "icmp": (1, ICMP(type=0, id=port))}[proto]
    frame = from_inet(IP(src=INET, dst=PRIMARY, proto=number, **frag) / bytes(reply))
    assert_passed_untouched(maps, run(prog, frame), prog, frame)


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("quoted", QUOTED.values(), ids=QUOTED)
def test_icmp_error_quoting_too_little_is_not_translated_from_padding(maps, run, prog, quoted):
    """The quote ends with the packet (tot_len): ports in the frame's padding are not its."""
    l4, icmp_type, code = quoted
    inner = bytes(run("from_container", from_pod(IP(src=POD_A["ip"], dst=INET) / l4())).frame[IP])
    error = ICMP(type=icmp_type, code=code) / inner[:22]       # cut inside the quoted ports
    frame = from_inet(bytes(IP(src=ROUTER, dst=PRIMARY) / error) + inner[22:28] + PAD)
    assert_passed_untouched(maps, run(prog, frame), prog, frame)
