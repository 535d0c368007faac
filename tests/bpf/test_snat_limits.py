"""SNAT as a shared resource (SPEC §5): each pod's flow quota, the mark a flow
gets from its first reply, and fragmented datagrams of translated flows, in
both directions, at tc and XDP."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT,
                      TC_ACT_SHOT, XDP_PASS, XDP_REDIRECT, checksums_ok, metric)
from vnetdp.datapath import maps as M

A = POD_A["ep"]
# Another pod behind the test's veth (ifindex 1), so that it can send too.
POD_C = dict(ip="10.3.1.3", ep=M.Endpoint(1, "02:00:00:00:00:0c", "02:00:00:00:01:0c"))
INET = "198.18.0.1"
NIC_HOOKS = {"from_nic": (TC_ACT_OK, TC_ACT_REDIRECT), "from_nic_xdp": (XDP_PASS, XDP_REDIRECT)}

# A flow from a pod, by its port on the pod's side (ICMP: the echo id).
FLOWS = {
    "udp": lambda port: UDP(sport=port, dport=53),
    "tcp": lambda port: TCP(sport=port, dport=443, flags="S"),
    "icmp": lambda port: ICMP(type=8, id=port, seq=1),
}


def from_pod(l4, pod: dict = POD_A, dst: str = INET, **ip):
    ep = pod["ep"]
    return Ether(src=ep.pod_mac, dst=ep.host_mac) / IP(src=pod["ip"], dst=dst, **ip) / l4


def from_inet(l4, src: str = INET, **ip):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=src, dst=PRIMARY, ttl=50, **ip) / l4


def reply_to(out: Ether, payload: bytes = b"answer"):
    """The remote's answer to a translated packet: ports (echo id) swapped."""
    l4 = out[IP].payload
    if isinstance(l4, ICMP):
        return ICMP(type=0, id=l4.id, seq=l4.seq) / payload
    if isinstance(l4, TCP):
        return TCP(sport=l4.dport, dport=l4.sport, flags="SA") / payload
    return UDP(sport=l4.dport, dport=l4.sport) / payload


def our_port(frame: Ether, inbound: bool) -> int:
    l4 = frame[IP].payload
    if isinstance(l4, ICMP):
        return l4.id
    return l4.dport if inbound else l4.sport


def set_node(maps: M.Maps, **changes) -> None:
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, **changes}))


def entries(maps: M.Maps, direction: int) -> list[M.SnatEntry]:
    return [e for e in maps.snat_entries() if e.direction == direction]


def went_to_host(r, prog: str, frame) -> bool:
    return (r.retval, r.how, r.raw) == (NIC_HOOKS[prog][0], "pass", bytes(frame))


# --- Each pod's flow quota ---------------------------------------------------

@pytest.mark.parametrize("proto", FLOWS)
def test_pod_at_its_quota_opens_no_flow_and_keeps_its_flows_others_keep_theirs(maps, run, proto):
    set_node(maps, snat_flows_per_endpoint=2)
    opened = [run("from_container", from_pod(FLOWS[proto](40000 + i))) for i in range(2)]
    assert all(r.retval == TC_ACT_REDIRECT for r in opened)
    assert maps.snat_quota(POD_A["ip"]) == 2

    refused = run("from_container", from_pod(FLOWS[proto](40002)))
    assert (refused.retval, refused.how) == (TC_ACT_SHOT, "drop")
    assert metric(maps, A.ifindex, "DROP_SNAT_QUOTA") == 1
    assert len(maps.snat_entries()) == 4 and maps.snat_quota(POD_A["ip"]) == 2

    # The pod's own flows go on, both ways.
    again = run("from_container", from_pod(FLOWS[proto](40000)))
    assert again.retval == TC_ACT_REDIRECT
    assert our_port(again.frame, False) == our_port(opened[0].frame, False)
    back = run("from_nic", from_inet(reply_to(opened[1].frame)))
    assert (back.retval, back.redirect_ifindex, back.how) == (TC_ACT_REDIRECT, A.ifindex, "peer")
    assert (back.frame[IP].dst, our_port(back.frame, True)) == (POD_A["ip"], 40001)

    # Another pod opens flows, to the same destination too.
    maps.put_endpoint(POD_C["ip"], POD_C["ep"])
    other = run("from_container", from_pod(FLOWS[proto](40002), pod=POD_C))
    assert other.retval == TC_ACT_REDIRECT and other.frame[IP].src == PRIMARY
    assert maps.snat_quota(POD_C["ip"]) == 1
    assert metric(maps, A.ifindex, "DROP_SNAT_QUOTA") == 1


def test_count_grows_per_new_flow_not_per_packet_and_starts_from_a_missing_entry(maps, run):
    for sport in (40000, 40000, 40000, 40001):
        assert run("from_container", from_pod(FLOWS["udp"](sport))).retval == TC_ACT_REDIRECT
    assert maps.snat_quotas() == {M.ip_of(M.ip_be32(POD_A["ip"])): 2}
    assert maps.delete_snat_quota(POD_A["ip"])
    assert maps.snat_quota(POD_A["ip"]) == 0
    run("from_container", from_pod(FLOWS["udp"](40002)))
    assert maps.snat_quota(POD_A["ip"]) == 1


@pytest.mark.parametrize("count", [0, 10**6])
def test_limit_zero_is_no_limit(maps, run, count):
    if count:
        maps.put_snat_quota(POD_A["ip"], count)
    for sport in range(40000, 40008):
        assert run("from_container", from_pod(FLOWS["udp"](sport))).retval == TC_ACT_REDIRECT
    assert metric(maps, A.ifindex, "DROP_SNAT_QUOTA") == 0


def test_a_missing_count_is_zero_and_the_sweeps_recount_is_obeyed(maps, run):
    set_node(maps, snat_flows_per_endpoint=1)
    assert run("from_container", from_pod(FLOWS["udp"](40000))).retval == TC_ACT_REDIRECT
    assert run("from_container", from_pod(FLOWS["udp"](40001))).retval == TC_ACT_SHOT
    maps.put_snat_quota(POD_A["ip"], 0)            # the sweep found the pod's flows gone
    assert run("from_container", from_pod(FLOWS["udp"](40001))).retval == TC_ACT_REDIRECT
    maps.put_snat_quota(POD_A["ip"], 5)            # ... or more than the limit
    assert run("from_container", from_pod(FLOWS["udp"](40002))).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SNAT_QUOTA") == 2


# --- A flow's first reply ----------------------------------------------------

@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("proto", FLOWS)
def test_a_reply_marks_the_flows_in_entry_replied(maps, run, prog, proto):
    out = run("from_container", from_pod(FLOWS[proto](40000))).frame
    run("from_container", from_pod(FLOWS[proto](40000)))
    assert not any(e.flags & M.SNAT_REPLIED for e in maps.snat_entries())
    for _ in range(2):
        assert run(prog, from_inet(reply_to(out))).retval == NIC_HOOKS[prog][1]
        [inbound], [outbound] = entries(maps, M.SNAT_IN), entries(maps, M.SNAT_OUT)
        assert inbound.replied and inbound.flags == M.SNAT_REPLIED
        assert not outbound.replied


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_an_icmp_error_about_a_flow_is_no_reply(maps, run, prog):
    out = run("from_container", from_pod(FLOWS["udp"](40000))).frame
    error = from_inet(ICMP(type=3, code=3) / bytes(out[IP])[:28], src="203.0.113.9")
    assert run(prog, error).retval == NIC_HOOKS[prog][1]
    assert not any(e.flags & M.SNAT_REPLIED for e in maps.snat_entries())


def test_a_syn_reopening_a_closed_flow_awaits_a_reply_again(maps, run):
    def pod_tcp(flags):
        return run("from_container", from_pod(TCP(sport=40000, dport=443, flags=flags))).frame

    def inet_tcp(out, flags):
        run("from_nic", from_inet(TCP(sport=443, dport=out[TCP].sport, flags=flags)))

    out = pod_tcp("S")
    inet_tcp(out, "SA")
    pod_tcp("FA")
    inet_tcp(out, "FA")
    assert entries(maps, M.SNAT_IN)[0].flags == M.SNAT_REPLIED | M.SNAT_CLOSING
    pod_tcp("S")
    assert all(e.flags == 0 for e in maps.snat_entries())
    inet_tcp(out, "SA")
    assert entries(maps, M.SNAT_IN)[0].replied


# --- Fragmented datagrams ------------------------------------------------------
# The remote's (or the pod's) datagram of 2 or 3 fragments. Each fragment goes
# through the program on its own, as on the wire; the outputs are reassembled
# here to check what the receiver would.

PAYLOAD = bytes(range(256)) * 9        # 2304 bytes: 3 fragments of 1000, or 2 of 1400
FRAGSIZES = {"2-fragments": 1400, "3-fragments": 1000}
IP_ID = 0x4242


def reassemble(frames: list[Ether]) -> Ether:
    """The datagram the fragments make up, with the first fragment's header."""
    frames = sorted(frames, key=lambda f: f[IP].frag)
    data = b""
    for f in frames:
        raw = bytes(f[IP])
        assert f[IP].frag * 8 == len(data)
        data += raw[f[IP].ihl * 4:f[IP].len]
    first = frames[0]
    ip = IP(bytes(first[IP])[:first[IP].ihl * 4])
    ip.flags, ip.frag, ip.len, ip.chksum = 0, 0, None, None
    return Ether(bytes(Ether(src=first.src, dst=first.dst) / ip / data))


def ip_header_ok(frame: Ether) -> bool:
    return checksum(bytes(frame[IP])[:frame[IP].ihl * 4]) == 0


DATAGRAMS = ["udp", "udp-no-checksum", "tcp", "icmp"]


def reply_fragments(run, name: str, fragsize: int = 1000) -> list[Ether]:
    """Open a flow of the pod's, and fragment the remote's large reply to it."""
    out = run("from_container", from_pod(FLOWS[name.split("-")[0]](40000))).frame
    reply = reply_to(out, PAYLOAD)
    if name == "udp-no-checksum":
        reply[UDP].chksum = 0
    return fragment(from_inet(reply, id=IP_ID), fragsize=fragsize)


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("fragsize", FRAGSIZES.values(), ids=FRAGSIZES)
@pytest.mark.parametrize("name", DATAGRAMS)
def test_fragmented_reply_reaches_the_pod_whole(maps, run, prog, name, fragsize):
    frags = reply_fragments(run, name, fragsize)
    assert len(frags) == {1400: 2, 1000: 3}[fragsize]
    results = [run(prog, f) for f in frags]
    for r in results:
        assert r.retval == NIC_HOOKS[prog][1]
        assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")
        assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
        assert (r.frame[IP].src, r.frame[IP].dst, r.frame[IP].id) == (INET, POD_A["ip"], IP_ID)
        assert r.frame[IP].ttl == 49 and ip_header_ok(r.frame)
    assert our_port(results[0].frame, True) == 40000
    whole = reassemble([r.frame for r in results])
    assert checksums_ok(whole)
    assert bytes(whole[IP].payload.payload) == PAYLOAD
    if name == "udp-no-checksum":
        assert whole[UDP].chksum == 0
    assert metric(maps, A.ifindex, "FWD_SNAT_REPLY") == 1
    assert metric(maps, A.ifindex, "FWD_SNAT_FRAGMENT") == len(frags) - 1


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_later_fragment_before_its_first_goes_to_the_host_untouched(maps, run, prog):
    first, middle, last = reply_fragments(run, "udp")
    assert went_to_host(run(prog, middle), prog, middle)
    assert metric(maps, A.ifindex, "PASS_NIC") == 1     # the test's NIC is the pod's veth, lo
    assert run(prog, first).redirect_ifindex == A.ifindex
    r = run(prog, last)
    assert (r.retval, r.frame[IP].dst) == (NIC_HOOKS[prog][1], POD_A["ip"])


UNKNOWN = {  # a later fragment that matches the translated first fragment in all but one field
    "other-id": dict(id=IP_ID + 1),
    "other-remote": dict(src="198.18.0.2"),
    "other-protocol": dict(proto=6),
}


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("change", UNKNOWN.values(), ids=UNKNOWN)
def test_later_fragment_of_no_translated_datagram_goes_to_the_host_untouched(maps, run, prog, change):
    first, middle, _ = reply_fragments(run, "udp")
    assert run(prog, first).retval == NIC_HOOKS[prog][1]
    stray = Ether(bytes(middle))
    for field, value in change.items():
        setattr(stray[IP], field, value)
    stray[IP].chksum = None
    stray = Ether(bytes(stray))
    assert went_to_host(run(prog, stray), prog, stray)
    assert metric(maps, A.ifindex, "FWD_SNAT_FRAGMENT") == 0


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_the_hosts_own_datagram_takes_its_id_back(maps, run, prog):
    """A first fragment of no flow, with a translated datagram's key: its later
    fragments are the host's, not the earlier datagram's."""
    first, _, _ = reply_fragments(run, "udp")
    run(prog, first)
    host = fragment(from_inet(UDP(sport=53, dport=33333) / PAYLOAD, id=IP_ID), fragsize=1000)
    assert all(went_to_host(run(prog, f), prog, f) for f in host)


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_fragment_for_a_deleted_pod_goes_to_the_host_untouched(maps, run, prog):
    first, middle, _ = reply_fragments(run, "udp")
    run(prog, first)
    maps.delete_endpoint(POD_A["ip"])
    assert went_to_host(run(prog, middle), prog, middle)


@pytest.mark.parametrize("fragsize", FRAGSIZES.values(), ids=FRAGSIZES)
@pytest.mark.parametrize("proto", FLOWS)
def test_fragmented_datagram_from_a_pod_leaves_translated_whole(maps, run, proto, fragsize):
    frags = fragment(from_pod(FLOWS[proto](40000) / PAYLOAD, id=IP_ID), fragsize=fragsize)
    results = [run("from_container", f) for f in frags]
    for r in results:
        assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, NIC_IFINDEX, "egress")
        assert (r.frame.src, r.frame.dst) == (NIC_MAC, GW_MAC)
        assert (r.frame[IP].src, r.frame[IP].dst, r.frame[IP].id) == (PRIMARY, INET, IP_ID)
        assert ip_header_ok(r.frame)
    [entry] = entries(maps, M.SNAT_OUT)
    assert our_port(results[0].frame, False) == entry.port
    whole = reassemble([r.frame for r in results])
    assert checksums_ok(whole)
    assert bytes(whole[IP].payload.payload) == PAYLOAD
    assert metric(maps, A.ifindex, "FWD_SNAT") == 1
    assert metric(maps, A.ifindex, "FWD_SNAT_FRAGMENT") == len(frags) - 1


def test_later_fragment_from_a_pod_before_its_first_is_a_counted_drop(maps, run):
    first, middle, _ = fragment(from_pod(FLOWS["udp"](40000) / PAYLOAD, id=IP_ID), fragsize=1000)
    assert run("from_container", middle).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_SNAT_UNSUPPORTED") == 1
    assert run("from_container", first).retval == TC_ACT_REDIRECT


def test_datagram_refused_by_the_quota_is_dropped_whole(maps, run):
    """Not translated as an earlier datagram of the pod's with the same IP id."""
    set_node(maps, snat_flows_per_endpoint=1)
    earlier = fragment(from_pod(FLOWS["udp"](40000) / PAYLOAD, id=IP_ID), fragsize=1000)
    assert all(run("from_container", f).retval == TC_ACT_REDIRECT for f in earlier)
    refused = fragment(from_pod(FLOWS["udp"](40001) / PAYLOAD, id=IP_ID), fragsize=1000)
    assert [run("from_container", f).retval for f in refused] == [TC_ACT_SHOT] * 3
    assert metric(maps, A.ifindex, "DROP_SNAT_QUOTA") == 1
    assert metric(maps, A.ifindex, "DROP_SNAT_UNSUPPORTED") == 2
