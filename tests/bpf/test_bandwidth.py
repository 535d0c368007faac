"""Pod rate limits (bpf/lib/bandwidth.h) on scapy frames: a GCRA policer on
the datapath's direct paths, no qdisc and no delivery time; and the map's
Python API.

A pod's limits count only with its EP_BANDWIDTH flag. BPF_PROG_TEST_RUN runs
on the real clock (bpf_ktime_get_ns(), CLOCK_MONOTONIC, time.monotonic_ns()'s
clock), so the policed tests use a rate slow enough that a quick burst of runs
is deterministic: RATE is 1000 bytes/s and every frame LEN = 500 bytes, half
a second each; BURST, a second's worth, lets three frames in at once (the
third finds the clock one second ahead, just within the tolerance) and
drops the fourth (1.5 s ahead) unless half a second went by."""
from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT,
                         TC_ACT_SHOT, XDP_DROP, XDP_REDIRECT, checksums_ok, metric)
from vnetdp.datapath import maps as M
from vnetdp.datapath.reasons import by_name

A, B = POD_A["ep"], POD_B["ep"]
INET = "198.18.0.1"
SECOND = 1_000_000_000
FROM_POD, TO_POD = 0, 1

RATE = 1000                     # bytes/s
LEN = 500                       # bytes a frame: half a second at RATE
FRAME_NS = LEN * SECOND // RATE
BURST = 1000                    # bytes: a second at RATE, the most a burst may be
PASSED = 3                      # frames a full burst lets in at once
MARGIN = FRAME_NS // 2          # how long the runs may take: the fourth frame must find the clock > BURST ahead


def sized(frame, length: int = LEN):
    """``frame`` padded with payload to ``length`` bytes."""
    return frame / Raw(b"x" * (length - len(bytes(frame))))


def from_a(dst: str = "10.3.0.100", length: int = LEN):
    return sized(Ether(src=A.pod_mac, dst=A.host_mac) / IP(src=POD_A["ip"], dst=dst) / TCP(sport=40000, dport=80),
                 length)


def from_fabric(dst: str = POD_A["ip"], src: str = "10.3.0.100"):
    return sized(Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=src, dst=dst, ttl=63) / UDP(sport=5000, dport=53))


def host_delivered(dst: str = POD_A["ip"], src: str = "198.51.100.7", dst_pod=A):
    """What the host stack sends out of a pod's host veth (a DNAT's delivery, say)."""
    return sized(Ether(src=dst_pod.host_mac, dst=dst_pod.pod_mac) / IP(src=src, dst=dst) /
                 TCP(sport=40000, dport=8080))


def snat_reply(run) -> Ether:
    """A reply from outside to a flow pod A opened (TCP 40000 to port 80)."""
    port = run("from_container", from_a(INET)).frame[TCP].sport
    return sized(Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=INET, dst=PRIMARY, ttl=50) /
                 TCP(sport=80, dport=port, flags="SA"))


def limit(maps: M.Maps, pod: dict, egress: int = 0, ingress: int = 0, burst: int = BURST) -> None:
    """Give a pod rates (bytes/s) and bursts as the control plane does: the entry, then the flag."""
    maps.put_bandwidth(pod["ip"], M.Bandwidth(egress, ingress, burst if egress else 0, burst if ingress else 0))
    maps.update_endpoint_flags(pod["ip"], add=M.EP_BANDWIDTH)


def raw_bandwidth(maps: M.Maps, pod: dict):
    """The pod's map value as the datapath sees it."""
    raw = M.PinnedMap(f"{maps.dir}/bandwidth", "__be32", "struct vnd_bandwidth")
    try:
        return raw.get(M.ip_be32(pod["ip"]))
    finally:
        raw.close()


def clocks(maps: M.Maps, pod: dict) -> tuple[int, int]:
    """The datapath's (egress, ingress) GCRA clocks (next_ns) of a pod."""
    c = raw_bandwidth(maps, pod)
    return c.egress.next_ns, c.ingress.next_ns


def counted(maps: M.Maps, reason: str) -> list[tuple[int, int, int]]:
    """(ifindex, direction, packets) of every counter of ``reason``."""
    code = by_name(reason).code
    return sorted((m.ifindex, m.direction, m.packets) for m in maps.metrics() if m.reason == code)


def burst_of_runs(run, prog: str, frame, n: int = 5) -> tuple[list, int, int]:
    """``n`` runs of ``prog`` on ``frame`` as quickly as may be, and the
    monotonic time before and after: they must fit in MARGIN."""
    before = time.monotonic_ns()
    results = [run(prog, frame) for _ in range(n)]
    after = time.monotonic_ns()
    assert after - before < MARGIN, "the runs were too slow for the policer tests' timing"
    return results, before, after


def assert_policed(maps, run, prog: str, frame, pod: dict, direction: str, passed: int, dropped: int):
    """Limit one direction of ``pod`` to RATE with BURST and run ``prog`` on
    ``frame`` five times at once: the first three get ``passed``, the last
    two ``dropped``; the pod's clock moved on by three frames' time from the
    first run (drops keep it), and no frame has a delivery time. The runs."""
    assert len(bytes(frame)) == LEN
    limit(maps, pod, **{direction: RATE})
    results, before, after = burst_of_runs(run, prog, frame)
    assert [r.retval for r in results] == [passed] * PASSED + [dropped] * 2
    assert [r.how for r in results[PASSED:]] == ["drop"] * 2
    clock = clocks(maps, pod)[direction == "ingress"]
    assert before + PASSED * FRAME_NS <= clock <= after + PASSED * FRAME_NS
    assert [r.tstamp for r in results] == [0] * 5
    return results


# Egress: what a pod sends, wherever it goes.

EGRESS = {  # destination -> (address, verdict, reason)
    "vnet": ("10.3.0.100", TC_ACT_REDIRECT, "FWD_VNET"),
    "snat": (INET, TC_ACT_REDIRECT, "FWD_SNAT"),
    "local-pod": (POD_B["ip"], TC_ACT_REDIRECT, "FWD_LOCAL"),
    "host": (PRIMARY, TC_ACT_OK, "FWD_HOST"),
}


@pytest.mark.parametrize("dest", EGRESS)
def test_egress_passes_within_the_burst_then_is_dropped_and_counted(maps, run, dest):
    addr, verdict, reason = EGRESS[dest]
    results = assert_policed(maps, run, "from_container", from_a(addr), POD_A, "egress", verdict, TC_ACT_SHOT)
    if verdict == TC_ACT_REDIRECT:
        assert {(r.redirect_ifindex, r.how) for r in results[:PASSED]} == {
            (B.ifindex, "peer") if dest == "local-pod" else (NIC_IFINDEX, "egress")}
    assert counted(maps, reason) == [(A.ifindex, FROM_POD, PASSED)]
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, FROM_POD, 2)]


def test_the_clock_moves_on_by_each_admitted_frames_length_at_the_rate(maps, run):
    limit(maps, POD_A, egress=RATE)
    before = time.monotonic_ns()
    assert run("from_container", from_a(length=100)).retval == TC_ACT_REDIRECT
    after = time.monotonic_ns()
    egress, ingress = clocks(maps, POD_A)
    assert before + 100 * SECOND // RATE <= egress <= after + 100 * SECOND // RATE
    assert ingress == 0
    assert run("from_container", from_a(length=333)).retval == TC_ACT_REDIRECT  # the clock lies ahead of now
    assert clocks(maps, POD_A)[0] == egress + 333 * SECOND // RATE


def test_time_gives_the_burst_back(maps, run):
    limit(maps, POD_A, egress=RATE)
    results, _, _ = burst_of_runs(run, "from_container", from_a(), n=4)
    assert [r.retval for r in results] == [TC_ACT_REDIRECT] * 3 + [TC_ACT_SHOT]
    time.sleep(FRAME_NS / SECOND)  # the clock is half a second nearer: one frame more
    results, _, _ = burst_of_runs(run, "from_container", from_a(), n=2)
    assert [r.retval for r in results] == [TC_ACT_REDIRECT, TC_ACT_SHOT]


def test_a_smaller_burst_lets_fewer_frames_in(maps, run):
    limit(maps, POD_A, egress=RATE, burst=LEN)  # half a second: two frames
    results, _, _ = burst_of_runs(run, "from_container", from_a(), n=3)
    assert [r.retval for r in results] == [TC_ACT_REDIRECT] * 2 + [TC_ACT_SHOT]


def test_new_rates_restart_the_clock(maps, run):
    limit(maps, POD_A, egress=RATE)
    results, _, _ = burst_of_runs(run, "from_container", from_a(), n=4)
    assert results[-1].retval == TC_ACT_SHOT
    limit(maps, POD_A, egress=RATE)
    assert clocks(maps, POD_A) == (0, 0)
    assert run("from_container", from_a()).retval == TC_ACT_REDIRECT


def test_without_local_switching_a_limited_pods_local_traffic_is_policed_to_the_nic(maps, run):
    node = maps.node()
    maps.put_node(type(node)(**{**node.__dict__, "flags": M.NODE_SNAT}))
    limit(maps, POD_B, ingress=RATE)  # B's ingress is policed where the frames come back: from_nic
    results = assert_policed(maps, run, "from_container", from_a(POD_B["ip"]), POD_A, "egress",
                             TC_ACT_REDIRECT, TC_ACT_SHOT)
    assert {(r.redirect_ifindex, r.how) for r in results[:PASSED]} == {(NIC_IFINDEX, "egress")}
    assert clocks(maps, POD_B) == (0, 0)


# Ingress: what a pod receives, policed where it enters the pod.

NIC_HOOKS = {"from_nic": (TC_ACT_REDIRECT, TC_ACT_SHOT), "from_nic_xdp": (XDP_REDIRECT, XDP_DROP)}


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_frames_from_the_nic_go_straight_into_the_pod_within_the_burst_then_are_dropped(maps, run, prog):
    results = assert_policed(maps, run, prog, from_fabric(), POD_A, "ingress", *NIC_HOOKS[prog])
    for r in results[:PASSED]:
        assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")  # no detour through a qdisc, nor to tc
        assert (r.frame.src, r.frame.dst, r.frame[IP].ttl) == (A.host_mac, A.pod_mac, 62)
        assert checksums_ok(r.frame)
    assert counted(maps, "FWD_TO_POD") == [(A.ifindex, TO_POD, PASSED)]
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, TO_POD, 2)]


@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_snat_replies_are_policed_against_their_pods_ingress(maps, run, prog):
    reply = snat_reply(run)
    results = assert_policed(maps, run, prog, reply, POD_A, "ingress", *NIC_HOOKS[prog])
    for r in results[:PASSED]:
        assert (r.redirect_ifindex, r.how) == (A.ifindex, "peer")
        assert (r.frame[IP].dst, r.frame[TCP].dport) == (POD_A["ip"], 40000)
        assert checksums_ok(r.frame)
    assert counted(maps, "FWD_SNAT_REPLY") == [(A.ifindex, TO_POD, PASSED)]
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, TO_POD, 2)]


def test_what_the_host_stack_delivers_is_policed_at_the_host_veth_and_remembered(maps, run):
    assert_policed(maps, run, "to_container", host_delivered(), POD_A, "ingress", TC_ACT_OK, TC_ACT_SHOT)
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, TO_POD, 2)]
    assert len(maps.host_flows()) == 1
    flags = maps.endpoint(POD_A["ip"]).flags
    assert flags & M.EP_HOST_FLOWS and flags & M.EP_BANDWIDTH


def test_the_hosts_own_connections_to_a_limited_pod_are_not_policed(maps, run):
    limit(maps, POD_A, ingress=RATE)
    results, _, _ = burst_of_runs(run, "to_container", host_delivered(src=PRIMARY))
    assert [(r.retval, r.tstamp) for r in results] == [(TC_ACT_OK, 0)] * 5
    assert clocks(maps, POD_A) == (0, 0)


@pytest.mark.parametrize("mark", [0, 0x4000, 0x766e6470], ids=["unmarked", "other-mark", "old-forwarded-mark"])
def test_a_host_veth_changes_nothing_for_an_unlimited_pod(maps, run, mark):
    r = run("to_container", host_delivered(), mark=mark)
    assert (r.retval, r.tstamp, r.mark) == (TC_ACT_OK, 0, mark)
    assert len(maps.host_flows()) == 1  # whatever the mark


# Pod to pod on the node: the sender's egress, then the receiver's ingress.

def test_pod_to_pod_is_policed_against_the_receivers_ingress_and_counted_for_it(maps, run):
    results = assert_policed(maps, run, "from_container", from_a(POD_B["ip"]), POD_B, "ingress",
                             TC_ACT_REDIRECT, TC_ACT_SHOT)
    assert {(r.redirect_ifindex, r.how) for r in results[:PASSED]} == {(B.ifindex, "peer")}
    assert counted(maps, "FWD_LOCAL") == [(A.ifindex, FROM_POD, PASSED)]
    assert counted(maps, "DROP_RATE_LIMIT") == [(B.ifindex, TO_POD, 2)]  # what B did not get


def test_the_receiver_is_charged_only_what_the_sender_may_send(maps, run):
    limit(maps, POD_A, egress=RATE)                 # three frames at once
    limit(maps, POD_B, ingress=RATE, burst=LEN)     # two
    results, before, after = burst_of_runs(run, "from_container", from_a(POD_B["ip"]))
    assert [r.retval for r in results] == [TC_ACT_REDIRECT] * 2 + [TC_ACT_SHOT] * 3
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, FROM_POD, 2), (B.ifindex, TO_POD, 1)]
    egress_a, ingress_b = clocks(maps, POD_A)[0], clocks(maps, POD_B)[1]
    assert before + 3 * FRAME_NS <= egress_a <= after + 3 * FRAME_NS  # the frame B dropped left A
    assert before + 2 * FRAME_NS <= ingress_b <= after + 2 * FRAME_NS  # A's drops never reached B


# Pods without a limit in a direction: the exact direct paths, nothing dropped.

@pytest.mark.parametrize("setup", ["no-limits", "entry-without-flag", "flag-without-entry", "ingress-only"])
def test_what_a_pod_without_an_egress_limit_sends_is_not_policed(maps, run, setup):
    if setup == "entry-without-flag":
        maps.put_bandwidth(POD_A["ip"], M.Bandwidth(egress_bytes_per_s=1, egress_burst_bytes=1))
    elif setup == "flag-without-entry":
        maps.update_endpoint_flags(POD_A["ip"], add=M.EP_BANDWIDTH)
    elif setup == "ingress-only":
        limit(maps, POD_A, ingress=1, burst=1)
    results, _, _ = burst_of_runs(run, "from_container", from_a())
    assert {(r.retval, r.redirect_ifindex, r.how, r.tstamp, r.mark) for r in results} == {
        (TC_ACT_REDIRECT, NIC_IFINDEX, "egress", 0, 0)}
    assert counted(maps, "DROP_RATE_LIMIT") == []
    if setup in ("entry-without-flag", "ingress-only"):
        assert clocks(maps, POD_A) == (0, 0)


@pytest.mark.parametrize("prog", NIC_HOOKS)
@pytest.mark.parametrize("setup", ["entry-without-flag", "egress-only"])
def test_what_a_pod_without_an_ingress_limit_receives_is_not_policed(maps, run, prog, setup):
    if setup == "entry-without-flag":
        maps.put_bandwidth(POD_A["ip"], M.Bandwidth(ingress_bytes_per_s=1, ingress_burst_bytes=1))
    else:
        limit(maps, POD_A, egress=1, burst=1)
    results, _, _ = burst_of_runs(run, prog, from_fabric())
    assert {(r.retval, r.redirect_ifindex, r.how) for r in results} == {(NIC_HOOKS[prog][0], A.ifindex, "peer")}
    assert clocks(maps, POD_A) == (0, 0)
    assert counted(maps, "DROP_RATE_LIMIT") == []


@pytest.mark.parametrize("limited", ["sender-ingress-only", "receiver-egress-only"])
def test_limits_the_other_way_leave_pod_to_pod_traffic_alone(maps, run, limited):
    if limited == "sender-ingress-only":
        limit(maps, POD_A, ingress=1, burst=1)
    else:
        limit(maps, POD_B, egress=1, burst=1)
    results, _, _ = burst_of_runs(run, "from_container", from_a(POD_B["ip"]))
    assert {(r.retval, r.redirect_ifindex, r.how, r.tstamp, r.mark) for r in results} == {
        (TC_ACT_REDIRECT, B.ifindex, "peer", 0, 0)}
    assert counted(maps, "FWD_LOCAL") == [(A.ifindex, FROM_POD, 5)]


def test_the_reason_keeps_its_code():
    reason = by_name("DROP_RATE_LIMIT")
    assert (reason.code, reason.is_drop) == (78, True)
    assert reason.description == "above the pod's bandwidth limit: policed"


# The Python API.

def test_bandwidth_round_trips_and_is_listed_and_deleted(maps):
    pod = ipaddress.IPv4Address("10.3.1.9")
    assert maps.bandwidth(pod) is None and maps.bandwidths() == {}
    bw = M.Bandwidth(egress_bytes_per_s=125_000, ingress_bytes_per_s=3_000_000, ingress_burst_bytes=100_000)
    maps.put_bandwidth(str(pod), bw)
    assert maps.bandwidth(pod) == bw == M.Bandwidth(125_000, 3_000_000, 65_536, 100_000)
    assert maps.bandwidths() == {pod: bw}
    assert maps.delete_bandwidth(pod) and not maps.delete_bandwidth(pod)
    assert maps.bandwidth(pod) is None


def test_the_map_holds_the_bursts_as_time_at_the_rate_and_clocks_at_zero(maps):
    maps.put_bandwidth(POD_A["ip"], M.Bandwidth(125_000, 1_000_000, 10_000, 1_500))
    c = raw_bandwidth(maps, POD_A)
    assert (c.egress.bytes_per_s, c.egress.burst_ns, c.egress.next_ns) == (125_000, 80_000_000, 0)
    assert (c.ingress.bytes_per_s, c.ingress.burst_ns, c.ingress.next_ns) == (1_000_000, 1_500_000, 0)
    maps.put_bandwidth(POD_A["ip"], M.Bandwidth(ingress_bytes_per_s=3))
    c = raw_bandwidth(maps, POD_A)
    assert (c.egress.bytes_per_s, c.egress.burst_ns) == (0, 0)
    assert (c.ingress.bytes_per_s, c.ingress.burst_ns) == (3, SECOND)  # the default, clamped to a second


@pytest.mark.parametrize("rate,burst", [(7, 3), (999_999_937, 12_345_677), (1_000_000_000, 1), (3, 1),
                                        (125_000, 65_537)])
def test_odd_bursts_read_back_exactly(maps, rate, burst):
    bw = M.Bandwidth(rate, rate, burst, burst)
    maps.put_bandwidth(POD_A["ip"], bw)
    assert maps.bandwidth(POD_A["ip"]) == bw
    assert (bw.egress_burst_bytes, bw.ingress_burst_bytes) == (burst, burst)


@pytest.mark.parametrize("rate,burst", [
    (1000, 1000),                   # max(20 ms, 64 KiB) is beyond a second: a second
    (65_536, 65_536),               # 64 KiB is a second
    (125_000, 65_536),              # 1 Mbit/s: 64 KiB
    (3_276_800, 65_536),            # 20 ms is 64 KiB
    (12_500_000, 250_000),          # 100 Mbit/s: 20 ms
    (1_250_000_000, 25_000_000),    # 10 Gbit/s: 20 ms
    (3_276_801, 65_537),            # 20 ms of a rate rounds up
])
def test_a_burst_of_zero_is_20ms_at_the_rate_at_least_64KiB_at_most_a_second(rate, burst):
    bw = M.Bandwidth(rate, rate)
    assert (bw.egress_burst_bytes, bw.ingress_burst_bytes) == (burst, burst)


def test_bursts_are_at_most_a_second_and_an_unlimited_direction_has_none():
    assert M.Bandwidth(125_000, 0, 2**62, 5000) == M.Bandwidth(125_000, 0, 125_000, 0)
    assert M.Bandwidth(125_000, 0, 125_001).egress_burst_bytes == 125_000
    assert M.Bandwidth(125_000, 0, 124_999).egress_burst_bytes == 124_999
    assert M.Bandwidth().limited is False and M.Bandwidth(0, 0, 1, 1) == M.Bandwidth()


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_rates_and_bursts_are_whole_numbers_at_least_zero(bad):
    with pytest.raises(ValueError):
        M.Bandwidth(1000, 0, bad)


def test_rates_and_bursts_in_bits_become_bytes_rounded_up():
    assert M.Bandwidth.from_bits(1_000_000, 9) == M.Bandwidth(125_000, 2)
    assert M.Bandwidth.from_bits(1_000_000, 9, 80_001, 0) == M.Bandwidth(125_000, 2, 10_001, 0)
    assert M.Bandwidth.from_bits(egress_rate_bits=8_000, ingress_rate_bits=0, egress_burst_bits=4_000,
                                 ingress_burst_bits=4_000) == M.Bandwidth(1000, 0, 500, 0)
    assert M.Bandwidth.from_bits(0, 0).limited is False
    assert M.Bandwidth.from_bits(0, 1).limited


def test_what_runtimes_pass_for_a_kubernetes_annotation_gets_a_sane_burst():
    """Kubernetes' bandwidth annotations give rates only: runtimes pass a
    burst of 0, or a huge one (math.MaxInt32 bits, say)."""
    ten_mbit = 10_000_000
    for burst_bits in (0, 2**31 - 1, 2**63 - 1):
        bw = M.Bandwidth.from_bits(ten_mbit, ten_mbit, burst_bits, burst_bits)
        assert bw.egress_bytes_per_s == bw.ingress_bytes_per_s == 1_250_000
        expected = 65_536 if burst_bits == 0 else 1_250_000  # the default, else a second
        assert bw.egress_burst_bytes == bw.ingress_burst_bytes == expected


def test_endpoint_flags_change_without_losing_the_datapaths(maps, run):
    run("to_container", host_delivered())  # the datapath sets EP_HOST_FLOWS
    ep = maps.update_endpoint_flags(POD_A["ip"], add=M.EP_BANDWIDTH)
    assert ep.flags == M.EP_HOST_FLOWS | M.EP_BANDWIDTH == maps.endpoint(POD_A["ip"]).flags
    assert maps.update_endpoint_flags(POD_A["ip"], remove=M.EP_BANDWIDTH).flags == M.EP_HOST_FLOWS
    assert maps.update_endpoint_flags("10.3.1.99", add=M.EP_BANDWIDTH) is None
    assert maps.endpoint("10.3.1.99") is None
