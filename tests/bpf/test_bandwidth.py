"""Pod rate limits (bpf/lib/bandwidth.h) on scapy frames: earliest departure
times in the skb, the paths paced packets take (through a pod's host veth
and its qdisc, not past it), horizon drops, and the map's Python API.

A pod's limits count only with its EP_BANDWIDTH flag. Delivery times are
CLOCK_MONOTONIC, bpf_ktime_get_ns()'s clock and time.monotonic_ns()'s."""
from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT,
                         TC_ACT_SHOT, XDP_PASS, XDP_REDIRECT, checksums_ok, metric)
from vnetdp.datapath import maps as M
from vnetdp.datapath.reasons import by_name

A, B = POD_A["ep"], POD_B["ep"]
INET = "198.18.0.1"
SECOND = 1_000_000_000


def from_a(dst: str = "10.3.0.100", **ip):
    return Ether(src=A.pod_mac, dst=A.host_mac) / IP(src=POD_A["ip"], dst=dst, **ip) / TCP(sport=40000, dport=80)


def from_fabric(dst: str = POD_A["ip"], l4=None, src: str = "10.3.0.100"):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=src, dst=dst, ttl=63) / (l4 or UDP(sport=5000, dport=53))


def host_delivered(dst: str = POD_A["ip"], src: str = "198.51.100.7", dst_pod=A):
    """What the host stack sends out of a pod's host veth (a DNAT's delivery, say)."""
    return Ether(src=dst_pod.host_mac, dst=dst_pod.pod_mac) / IP(src=src, dst=dst) / TCP(sport=40000, dport=8080)


def limit(maps: M.Maps, pod: dict, egress: int = 0, ingress: int = 0) -> None:
    """Give a pod rates (bytes/s) as the control plane does: the entry, then the flag."""
    maps.put_bandwidth(pod["ip"], M.Bandwidth(egress, ingress))
    maps.update_endpoint_flags(pod["ip"], add=M.EP_BANDWIDTH)


def clocks(maps: M.Maps, pod: dict) -> tuple[int, int]:
    """The datapath's (egress, ingress) clocks of a pod."""
    raw = M.PinnedMap(f"{maps.dir}/bandwidth", "__be32", "struct vnd_bandwidth")
    try:
        c = raw.get(M.ip_be32(pod["ip"]))
        return c.egress.next_ns, c.ingress.next_ns
    finally:
        raw.close()


PER_SECOND = 10                 # the paced tests' rate: frames a second (slow: a run may take ms)
STEP = SECOND // PER_SECOND     # and the time of one frame


def assert_paced(maps, run, prog: str, frame, pod: dict, direction: str, n: int = 3, mark: int = 0) -> list[int]:
    """Limit one direction of ``pod`` to PER_SECOND of ``frame`` and run
    ``prog`` on it n times: the first leaves at once, each next one STEP
    later, and the clock is at the one after. Their delivery times."""
    limit(maps, pod, **{direction: len(bytes(frame)) * PER_SECOND})
    before = time.monotonic_ns()
    results = [run(prog, frame, mark=mark) for _ in range(n)]
    after = time.monotonic_ns()
    assert all(r.retval in (TC_ACT_OK, TC_ACT_REDIRECT) for r in results)
    stamps = [r.tstamp for r in results]
    assert before <= stamps[0] <= after
    assert stamps == [stamps[0] + i * STEP for i in range(n)]
    assert clocks(maps, pod)[direction == "ingress"] == stamps[0] + n * STEP
    return stamps


def one_a_second(maps, pod: dict, frame, direction: str) -> None:
    """Limit one direction of ``pod`` to one ``frame`` a second: a fourth waits 3 s, beyond the horizon."""
    limit(maps, pod, **{direction: len(bytes(frame))})


# Egress: what a pod sends.

def test_egress_limited_pod_gets_delivery_times_a_packet_time_apart(maps, run):
    assert_paced(maps, run, "from_container", from_a(), POD_A, "egress", n=4)
    r = run("from_container", from_a())
    assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, NIC_IFINDEX, "egress")  # the NIC's fq holds it
    assert r.mark == 0
    assert metric(maps, A.ifindex, "FWD_VNET") == 5


def test_translated_traffic_is_paced_too(maps, run):
    assert_paced(maps, run, "from_container", from_a(INET), POD_A, "egress")
    assert metric(maps, A.ifindex, "FWD_SNAT") == 3


@pytest.mark.parametrize("setup", ["no-limits", "entry-without-flag", "flag-without-entry", "ingress-only"])
def test_what_a_pod_without_an_egress_limit_sends_has_no_delivery_time(maps, run, setup):
    if setup == "entry-without-flag":
        maps.put_bandwidth(POD_A["ip"], M.Bandwidth(egress_bytes_per_s=1000))
    elif setup == "flag-without-entry":
        maps.update_endpoint_flags(POD_A["ip"], add=M.EP_BANDWIDTH)
    elif setup == "ingress-only":
        limit(maps, POD_A, ingress=1000)
    r = run("from_container", from_a())
    assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, NIC_IFINDEX, "egress")
    assert (r.tstamp, r.mark) == (0, 0)


def test_packets_beyond_the_horizon_are_dropped_and_counted_and_keep_the_clock(maps, run):
    one_a_second(maps, POD_A, from_a(), "egress")
    results = [run("from_container", from_a()) for _ in range(5)]
    assert [r.retval for r in results] == [TC_ACT_REDIRECT] * 3 + [TC_ACT_SHOT] * 2
    assert results[3].how == "drop"
    assert metric(maps, A.ifindex, "DROP_RATE_HORIZON") == 2
    assert metric(maps, A.ifindex, "FWD_VNET") == 3
    assert clocks(maps, POD_A)[0] == results[0].tstamp + 3 * SECOND


def test_new_rates_restart_the_clock(maps, run):
    one_a_second(maps, POD_A, from_a(), "egress")
    for _ in range(3):
        run("from_container", from_a())
    one_a_second(maps, POD_A, from_a(), "egress")
    before = time.monotonic_ns()
    assert before <= run("from_container", from_a()).tstamp <= time.monotonic_ns()


# Ingress: what a pod receives, paced where it leaves the pod's host veth.

def test_frames_from_the_nic_for_an_ingress_limited_pod_go_through_its_host_veth(maps, run):
    limit(maps, POD_A, ingress=10_000)
    r = run("from_nic", from_fabric())
    assert r.retval == TC_ACT_REDIRECT
    assert (r.redirect_ifindex, r.how) == (A.ifindex, "pod-qdisc")  # bpf_redirect to its egress, not peer
    assert (r.frame.src, r.frame.dst) == (A.host_mac, A.pod_mac)
    assert r.frame[IP].ttl == 62 and checksums_ok(r.frame)
    assert r.mark != 0 and r.tstamp == 0
    assert metric(maps, A.ifindex, "FWD_TO_POD_PACED") == 1
    assert metric(maps, A.ifindex, "FWD_TO_POD") == 0


def test_the_pods_host_veth_paces_what_the_nic_sent_and_remembers_no_host_flow(maps, run):
    limit(maps, POD_A, ingress=10_000)
    nic = run("from_nic", from_fabric(l4=TCP(sport=40000, dport=8080)))
    assert_paced(maps, run, "to_container", nic.raw, POD_A, "ingress", mark=nic.mark)
    r = run("to_container", nic.raw, mark=nic.mark)
    assert (r.retval, r.mark) == (TC_ACT_OK, 0)  # the mark goes
    assert r.raw == nic.raw
    assert maps.host_flows() == []
    assert not maps.endpoint(POD_A["ip"]).flags & M.EP_HOST_FLOWS


def test_what_the_host_stack_delivers_to_an_ingress_limited_pod_is_paced_and_remembered(maps, run):
    assert_paced(maps, run, "to_container", host_delivered(), POD_A, "ingress")
    assert len(maps.host_flows()) == 1
    flags = maps.endpoint(POD_A["ip"]).flags
    assert flags & M.EP_HOST_FLOWS and flags & M.EP_BANDWIDTH


def test_the_hosts_own_connections_to_a_limited_pod_are_not_paced(maps, run):
    limit(maps, POD_A, ingress=1000)
    r = run("to_container", host_delivered(src=PRIMARY))
    assert (r.retval, r.tstamp) == (TC_ACT_OK, 0)


def test_ingress_beyond_the_horizon_is_dropped_at_the_host_veth_and_counted(maps, run):
    one_a_second(maps, POD_A, host_delivered(), "ingress")
    assert [run("to_container", host_delivered()).retval for _ in range(4)] == [TC_ACT_OK] * 3 + [TC_ACT_SHOT]
    drops = [m for m in maps.metrics() if m.reason == by_name("DROP_RATE_HORIZON").code]
    assert [(m.ifindex, m.direction, m.packets) for m in drops] == [(A.ifindex, 1, 1)]  # to the pod


@pytest.mark.parametrize("mark", [0, 0x4000], ids=["unmarked", "other-mark"])
def test_unlimited_pods_host_veth_changes_nothing(maps, run, mark):
    r = run("to_container", host_delivered(), mark=mark)
    assert (r.retval, r.tstamp, r.mark) == (TC_ACT_OK, 0, mark)


def test_egress_only_limit_leaves_incoming_frames_on_the_direct_path(maps, run):
    limit(maps, POD_A, egress=1000)
    r = run("from_nic", from_fabric())
    assert (r.redirect_ifindex, r.how, r.mark) == (A.ifindex, "peer", 0)
    assert metric(maps, A.ifindex, "FWD_TO_POD") == 1


def snat_reply(run) -> Ether:
    """A reply from outside to a flow pod A opened (TCP 40000 to port 80)."""
    port = run("from_container", from_a(INET)).frame[TCP].sport
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=INET, dst=PRIMARY, ttl=50) / TCP(sport=80, dport=port, flags="SA")


def test_snat_replies_into_an_ingress_limited_pod_go_through_its_host_veth(maps, run):
    reply = snat_reply(run)
    limit(maps, POD_A, ingress=10_000)
    r = run("from_nic", reply)
    assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, A.ifindex, "pod-qdisc")
    assert (r.frame[IP].dst, r.frame[TCP].dport) == (POD_A["ip"], 40000)
    assert checksums_ok(r.frame) and r.mark != 0
    assert metric(maps, A.ifindex, "FWD_TO_POD_PACED") == 1


# XDP: no delivery time there, so tc ingress behind it paces.

def test_xdp_passes_frames_for_an_ingress_limited_pod_up_to_tc(maps, run):
    limit(maps, POD_A, ingress=10_000)
    frame = from_fabric()
    r = run("from_nic_xdp", frame)
    assert (r.retval, r.how) == (XDP_PASS, "pass")
    assert r.raw == bytes(frame)  # TTL and MACs are left to tc
    [m] = [m for m in maps.metrics() if m.reason == by_name("PASS_XDP_PACED").code]
    assert (m.direction, m.packets) == (2, 1)  # the NIC's count
    tc = run("from_nic", r.raw)
    assert (tc.redirect_ifindex, tc.how, tc.frame[IP].ttl) == (A.ifindex, "pod-qdisc", 62)


def test_xdp_passes_snat_replies_for_an_ingress_limited_pod_translated(maps, run):
    reply = snat_reply(run)
    limit(maps, POD_A, ingress=10_000)
    r = run("from_nic_xdp", reply)
    assert r.retval == XDP_PASS
    assert (r.frame[IP].dst, r.frame[TCP].dport, r.frame[IP].ttl) == (POD_A["ip"], 40000, 50)
    assert checksums_ok(r.frame)
    tc = run("from_nic", r.raw)
    assert (tc.redirect_ifindex, tc.how) == (A.ifindex, "pod-qdisc")


def test_xdp_keeps_redirecting_for_pods_without_an_ingress_limit(maps, run):
    limit(maps, POD_A, egress=1000)
    r = run("from_nic_xdp", from_fabric())
    assert (r.retval, r.redirect_ifindex, r.how) == (XDP_REDIRECT, A.ifindex, "peer")


# Pod to pod on the node.

def test_egress_limited_pod_to_local_pod_goes_through_the_receivers_host_veth(maps, run):
    assert_paced(maps, run, "from_container", from_a(POD_B["ip"]), POD_A, "egress")
    r = run("from_container", from_a(POD_B["ip"]))
    assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, B.ifindex, "pod-qdisc")
    assert (r.frame.src, r.frame.dst) == (B.host_mac, B.pod_mac)
    assert r.mark != 0
    assert metric(maps, A.ifindex, "FWD_LOCAL_PACED") == 4
    assert metric(maps, A.ifindex, "FWD_LOCAL") == 0


def test_pod_to_ingress_limited_local_pod_is_paced_at_the_receivers_host_veth(maps, run):
    limit(maps, POD_B, ingress=10_000)
    r = run("from_container", from_a(POD_B["ip"]))
    assert (r.redirect_ifindex, r.how, r.tstamp) == (B.ifindex, "pod-qdisc", 0)  # the sender has no limit
    assert metric(maps, A.ifindex, "FWD_LOCAL_PACED") == 1
    assert_paced(maps, run, "to_container", r.raw, POD_B, "ingress", mark=r.mark)
    assert maps.host_flows() == []


@pytest.mark.parametrize("limited", ["sender-ingress-only", "receiver-egress-only"])
def test_limits_the_other_way_leave_pod_to_pod_traffic_on_the_direct_path(maps, run, limited):
    if limited == "sender-ingress-only":
        limit(maps, POD_A, ingress=1000)
    else:
        limit(maps, POD_B, egress=1000)
    r = run("from_container", from_a(POD_B["ip"]))
    assert (r.redirect_ifindex, r.how, r.tstamp, r.mark) == (B.ifindex, "peer", 0, 0)
    assert metric(maps, A.ifindex, "FWD_LOCAL") == 1


def test_without_local_switching_a_limited_pods_local_traffic_is_paced_at_the_nic(maps, run):
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, "flags": M.NODE_SNAT}))
    limit(maps, POD_A, egress=10_000)
    r = run("from_container", from_a(POD_B["ip"]))
    assert (r.redirect_ifindex, r.how, r.mark) == (NIC_IFINDEX, "egress", 0)
    assert r.tstamp > 0


# The Python API.

def test_bandwidth_round_trips_and_is_listed_and_deleted(maps):
    pod = ipaddress.IPv4Address("10.3.1.9")
    assert maps.bandwidth(pod) is None and maps.bandwidths() == {}
    maps.put_bandwidth(str(pod), M.Bandwidth(egress_bytes_per_s=125_000))
    assert maps.bandwidth(pod) == M.Bandwidth(125_000, 0)
    assert maps.bandwidths() == {pod: M.Bandwidth(125_000, 0)}
    assert maps.delete_bandwidth(pod) and not maps.delete_bandwidth(pod)
    assert maps.bandwidth(pod) is None


def test_rates_in_bits_become_bytes_rounded_up():
    assert M.Bandwidth.from_bits(egress_bits_per_s=1_000_000, ingress_bits_per_s=9) == M.Bandwidth(125_000, 2)
    assert M.Bandwidth.from_bits().limited is False
    assert M.Bandwidth.from_bits(ingress_bits_per_s=1).limited


def test_endpoint_flags_change_without_losing_the_datapaths(maps, run):
    run("to_container", host_delivered())  # the datapath sets EP_HOST_FLOWS
    ep = maps.update_endpoint_flags(POD_A["ip"], add=M.EP_BANDWIDTH)
    assert ep.flags == M.EP_HOST_FLOWS | M.EP_BANDWIDTH == maps.endpoint(POD_A["ip"]).flags
    assert maps.update_endpoint_flags(POD_A["ip"], remove=M.EP_BANDWIDTH).flags == M.EP_HOST_FLOWS
    assert maps.update_endpoint_flags("10.3.1.99", add=M.EP_BANDWIDTH) is None
    assert maps.endpoint("10.3.1.99") is None
