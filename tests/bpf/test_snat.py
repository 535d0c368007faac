"""SNAT (SPEC §5 pod step 5, NIC step 2) on scapy frames: translation out of
from_container, reverse translation in from_nic and from_nic_xdp."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror
from scapy.layers.l2 import Ether

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, PRIMARY, SNAT_TABLE_SIZE,
                      TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_PASS, XDP_REDIRECT,
                      checksums_ok, metric)
from vnetdp.datapath import maps as M

A = POD_A["ep"]
INET = "198.18.0.1"
PORTS = range(61000, 65536)
NIC_HOOKS = {"from_nic": (TC_ACT_OK, TC_ACT_REDIRECT), "from_nic_xdp": (XDP_PASS, XDP_REDIRECT)}


def from_pod(l4, dst: str = INET, src: str = POD_A["ip"], mac: str = A.pod_mac, **ip):
    return Ether(src=mac, dst=A.host_mac) / IP(src=src, dst=dst, **ip) / l4


def from_inet(l4, dst: str = PRIMARY, src: str = INET):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=src, dst=dst, ttl=50) / l4


def set_node(maps: M.Maps, **changes) -> None:
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, **changes}))


def out_entry(maps: M.Maps) -> M.SnatEntry:
    [entry] = [e for e in maps.snat_entries() if e.direction == M.SNAT_OUT]
    return entry


TRANSLATED = {
    "tcp-syn": TCP(sport=40000, dport=80, flags="S"),
    "udp": UDP(sport=40001, dport=53) / b"query",
    "udp-no-checksum": UDP(sport=40002, dport=53, chksum=0) / b"query",
    "icmp-echo": ICMP(type=8, id=0x1234, seq=1) / b"ping",
}


@pytest.mark.parametrize("l4", TRANSLATED.values(), ids=TRANSLATED.keys())
def test_outbound_is_translated_to_primary_ip_with_valid_checksums(maps, run, l4):
    frame = from_pod(l4)
    r = run("from_container", frame)
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert (r.frame.src, r.frame.dst) == (NIC_MAC, GW_MAC)
    assert (r.frame[IP].src, r.frame[IP].dst) == (PRIMARY, INET)
    port = r.frame[ICMP].id if ICMP in r.frame else r.frame[IP].payload.sport
    assert port in PORTS
    assert checksums_ok(r.frame)
    if UDP in frame and frame[UDP].chksum == 0:
        assert r.frame[UDP].chksum == 0
    assert bytes(r.frame[IP].payload.payload) == bytes(frame[IP].payload.payload)
    assert metric(maps, A.ifindex, "FWD_SNAT") == 1
    entry = out_entry(maps)
    assert (entry.saddr, entry.addr, entry.port) == (M.ip_of(M.ip_be32(POD_A["ip"])), M.ip_of(M.ip_be32(PRIMARY)), port)


def test_packets_of_one_flow_share_one_translation_and_other_flows_differ(maps, run):
    first = run("from_container", from_pod(UDP(sport=40000, dport=53)))
    again = run("from_container", from_pod(UDP(sport=40000, dport=53)))
    other = run("from_container", from_pod(UDP(sport=40001, dport=53)))
    assert first.frame[UDP].sport == again.frame[UDP].sport
    assert other.frame[UDP].sport != first.frame[UDP].sport
    assert len(maps.snat_entries()) == 4


def test_pod_port_inside_the_range_is_kept(maps, run):
    r = run("from_container", from_pod(UDP(sport=62000, dport=53)))
    assert r.frame[UDP].sport == 62000


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("l4", TRANSLATED.values(), ids=TRANSLATED.keys())
def test_reply_is_translated_back_into_the_pod(maps, run, prog, l4):
    out = run("from_container", from_pod(l4)).frame
    if ICMP in out:
        reply = ICMP(type=0, id=out[ICMP].id, seq=1) / b"pong"
    else:
        proto = type(out[IP].payload)
        reply = proto(sport=out[IP].payload.dport, dport=out[IP].payload.sport) / b"answer"
        if UDP in out and out[UDP].chksum == 0:
            reply[UDP].chksum = 0
    r = run(prog, from_inet(reply))
    assert r.retval == NIC_HOOKS[prog][1]
    assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")
    assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
    assert (r.frame[IP].src, r.frame[IP].dst) == (INET, POD_A["ip"])
    port = r.frame[ICMP].id if ICMP in r.frame else r.frame[IP].payload.dport
    assert port == (l4.id if ICMP in l4 else l4.sport)
    assert checksums_ok(r.frame)
    assert metric(maps, A.ifindex, "FWD_SNAT_REPLY") == 1


QUOTED = {
    "udp-port-unreachable": (UDP(sport=40000, dport=33434), 3, 3),
    "tcp-frag-needed": (TCP(sport=40000, dport=443, flags="S"), 3, 4),
    "echo-time-exceeded": (ICMP(type=8, id=0x4242, seq=7), 11, 0),
}


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("quoted", QUOTED.values(), ids=QUOTED.keys())
def test_icmp_error_quoting_a_translated_packet_reaches_the_pod(maps, run, prog, quoted):
    l4, icmp_type, code = quoted
    out = run("from_container", from_pod(l4, ttl=64)).frame
    router = "203.0.113.9"
    error = Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=router, dst=PRIMARY, ttl=50) / \
        ICMP(type=icmp_type, code=code, nexthopmtu=1400 if code == 4 else 0) / bytes(out[IP])[:28]
    r = run(prog, error)
    assert r.retval == NIC_HOOKS[prog][1]
    assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")
    assert (r.frame[IP].src, r.frame[IP].dst) == (router, POD_A["ip"])
    inner = r.frame[IPerror]
    assert (inner.src, inner.dst) == (POD_A["ip"], INET)
    if ICMPerror in inner:
        assert inner[ICMPerror].id == l4.id
    else:
        assert inner.payload.sport == l4.sport
    assert checksums_ok(r.frame)
    assert metric(maps, A.ifindex, "FWD_SNAT_ICMP_ERROR") == 1


def test_vnet_destination_is_never_translated(maps, run):
    r = run("from_container", from_pod(UDP(sport=40000, dport=53), dst="10.3.0.100"))
    assert r.frame[IP].src == POD_A["ip"] and r.frame[UDP].sport == 40000
    assert maps.snat_entries() == []


def test_snat_disabled_leaves_untranslated(maps, run):
    set_node(maps, flags=M.NODE_LOCAL_SWITCHING)
    r = run("from_container", from_pod(UDP(sport=40000, dport=53)))
    assert (r.redirect_ifindex, r.how) == (NIC_IFINDEX, "egress")
    assert r.frame[IP].src == POD_A["ip"]
    assert metric(maps, A.ifindex, "FWD_UNTRANSLATED") == 1
    assert maps.snat_entries() == []


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_packet_of_no_known_flow_reaches_the_host_untouched(maps, run, prog):
    run("from_container", from_pod(TCP(sport=40000, dport=80, flags="S")))
    for frame in (from_inet(TCP(sport=80, dport=40000, flags="SA")),    # host's own connection
                  from_inet(TCP(sport=81, dport=out_entry(maps).port)),   # other remote port
                  from_inet(UDP(sport=80, dport=out_entry(maps).port))):  # other protocol
        r = run(prog, frame)
        assert r.retval == NIC_HOOKS[prog][0]
        assert r.raw == bytes(frame)


@pytest.mark.parametrize("l4,ip", [
    (b"x" * 64, dict(frag=8, proto=17)),       # later fragment of no translated datagram
    (b"gre", dict(proto=47)),                   # not TCP/UDP/ICMP
    (ICMP(type=3, code=3) / (b"x" * 28), {}),   # ICMP error from a pod
], ids=["later-fragment", "gre", "icmp-error"])
def test_untranslatable_traffic_leaving_the_vnet_is_a_counted_drop(maps, run, l4, ip):
    r = run("from_container", from_pod(l4, **ip))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SNAT_UNSUPPORTED") == 1
    assert maps.snat_entries() == []


def test_exhausted_port_range_is_a_counted_drop_per_destination(maps, run):
    set_node(maps, snat_port_min=61000, snat_port_max=61000)
    assert run("from_container", from_pod(UDP(sport=40000, dport=53))).frame[UDP].sport == 61000
    assert run("from_container", from_pod(UDP(sport=40001, dport=53))).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SNAT_NO_PORT") == 1
    other = run("from_container", from_pod(UDP(sport=40001, dport=54)))  # another destination
    assert other.retval == TC_ACT_REDIRECT and other.frame[UDP].sport == 61000


def test_a_closed_tcp_flows_port_is_taken_over_by_a_new_flow(maps, run):
    """As conntrack reuses TIME_WAIT tuples (the test build has no quiet time)."""
    set_node(maps, snat_port_min=61000, snat_port_max=61000)
    syn = lambda sport: from_pod(TCP(sport=sport, dport=80, flags="S"))  # noqa: E731
    assert run("from_container", syn(40000)).frame[TCP].sport == 61000
    assert run("from_container", syn(40001)).retval == TC_ACT_SHOT       # still open: no port
    run("from_container", from_pod(TCP(sport=40000, dport=80, flags="FA")))
    assert run("from_container", syn(40001)).retval == TC_ACT_SHOT       # only our side closed
    run("from_nic", from_inet(TCP(sport=80, dport=61000, flags="FA")))
    r = run("from_container", syn(40001))
    assert r.retval == TC_ACT_REDIRECT and r.frame[TCP].sport == 61000
    assert {e.sport for e in maps.snat_entries() if e.direction == M.SNAT_OUT} == {40001}


@pytest.mark.parametrize("reset_by", ["pod", "remote"])
def test_a_reset_flows_port_is_taken_over_at_once(maps, run, reset_by):
    """A RST ends the connection on both ends: no quiet time, whichever side
    sent it (a client that aborts its connections, as a load test does,
    would otherwise run a destination out of ports)."""
    set_node(maps, snat_port_min=61000, snat_port_max=61000)
    syn = lambda sport: from_pod(TCP(sport=sport, dport=80, flags="S"))  # noqa: E731
    assert run("from_container", syn(40000)).frame[TCP].sport == 61000
    if reset_by == "pod":
        run("from_container", from_pod(TCP(sport=40000, dport=80, flags="R")))
    else:
        run("from_nic", from_inet(TCP(sport=80, dport=61000, flags="R")))
    assert {e.flags & (M.SNAT_CLOSING | M.SNAT_RESET) for e in maps.snat_entries()} == {
        M.SNAT_CLOSING | M.SNAT_RESET}
    r = run("from_container", syn(40001))
    assert r.retval == TC_ACT_REDIRECT and r.frame[TCP].sport == 61000
    assert {e.sport for e in maps.snat_entries() if e.direction == M.SNAT_OUT} == {40001}
    assert not any(e.flags & M.SNAT_RESET for e in maps.snat_entries())  # the new flow's entries
    assert maps.snat_quotas()[ipaddress.IPv4Address(POD_A["ip"])] == 1  # the flow taken over no longer counts


def test_full_table_drops_new_flows_and_keeps_existing_ones(maps, run):
    flows = SNAT_TABLE_SIZE // 2
    ports = [run("from_container", from_pod(UDP(sport=30000 + i, dport=53))).frame[UDP].sport
             for i in range(flows)]
    assert len(set(ports)) == flows
    r = run("from_container", from_pod(UDP(sport=20000, dport=53)))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SNAT_TABLE_FULL") == 1
    again = run("from_container", from_pod(UDP(sport=30000, dport=53)))
    assert again.frame[UDP].sport == ports[0]
    assert len(maps.snat_entries()) == SNAT_TABLE_SIZE


def test_tcp_fin_marks_the_flow_closing_and_a_new_syn_reopens_it(maps, run):
    run("from_container", from_pod(TCP(sport=40000, dport=80, flags="S")))
    run("from_container", from_pod(TCP(sport=40000, dport=80, flags="FA")))
    assert out_entry(maps).flags & M.SNAT_CLOSING
    run("from_container", from_pod(TCP(sport=40000, dport=80, flags="S")))
    assert all(not e.flags & M.SNAT_CLOSING for e in maps.snat_entries())


def test_reply_for_a_deleted_pod_reaches_the_host_untouched(maps, run):
    run("from_container", from_pod(UDP(sport=40000, dport=53)))
    maps.delete_endpoint(POD_A["ip"])
    frame = from_inet(UDP(sport=53, dport=out_entry(maps).port))
    r = run("from_nic", frame)
    assert r.retval == TC_ACT_OK and r.raw == bytes(frame)
