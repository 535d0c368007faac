"""Pod rate limits (bpf/lib/bandwidth.h) on scapy frames: traffic into a pod
with an ingress rate steered through its host veth's qdisc (marked, never
dropped here), a pod's egress policed by a GCRA behind its own shaper; and
the map's Python API.

A pod's limits count only with its EP_BANDWIDTH flag. BPF_PROG_TEST_RUN runs
on the real clock (bpf_ktime_get_ns(), CLOCK_MONOTONIC, time.monotonic_ns()'s
clock), so the policed tests use a rate slow enough that a quick burst of runs
is deterministic: RATE is 1000 bytes/s and every frame LEN = 500 bytes, half
a second each; a TOLERANCE of a second (the policer allows twice the
shaper's burst: burst_ns is half a second) lets three frames in at once (the
third finds the clock one second ahead, just within it) and drops the
fourth (1.5 s ahead) unless half a second went by. Those map values are
written raw: the control plane's bursts are at least 64 KiB."""
from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT,
                         TC_ACT_SHOT, XDP_PASS, XDP_REDIRECT, checksums_ok)
from vnetdp.datapath import layouts as L
from vnetdp.datapath import maps as M
from vnetdp.datapath.reasons import by_name

A, B = POD_A["ep"], POD_B["ep"]
INET = "198.18.0.1"
SECOND = 1_000_000_000
FROM_POD, TO_POD, NIC = 0, 1, 2

RATE = 1000                     # bytes/s
LEN = 500                       # bytes a frame: half a second at RATE
FRAME_NS = LEN * SECOND // RATE
TOLERANCE = 1000                # bytes: a second at RATE, twice the shaper's burst
PASSED = 3                      # frames a full tolerance lets in at once
MARGIN = FRAME_NS // 2          # how long the runs may take: the fourth frame must find the clock > TOLERANCE ahead
MARK_FORWARDED = 0x766e6470     # bpf/lib/verdict.h: what the datapath sends through a pod's qdisc


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


def limit(maps: M.Maps, pod: dict, egress: int = 0, ingress: int = 0, tolerance: int = TOLERANCE) -> None:
    """Give a pod rates (bytes/s) whose policer tolerates ``tolerance`` bytes
    at once, raw (burst_ns is half of it), in the control plane's order: the
    entry, then the flag."""
    rate = lambda bps: {"bytes_per_s": bps, "burst_ns": tolerance * SECOND // bps // 2 if bps else 0}  # noqa: E731
    raw = M.PinnedMap(f"{maps.dir}/bandwidth", "__be32", "struct vnd_bandwidth")
    try:
        raw.put(M.ip_be32(pod["ip"]), L.new("struct vnd_bandwidth", {"egress": rate(egress), "ingress": rate(ingress)}))
    finally:
        raw.close()
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


def assert_policed(maps, run, prog: str, frame, pod: dict, passed: int, dropped: int):
    """Limit ``pod``'s egress to RATE with TOLERANCE and run ``prog`` on
    ``frame`` five times at once: the first three get ``passed``, the last
    two ``dropped``; the pod's clock moved on by three frames' time from the
    first run (drops keep it), and no frame has a delivery time. The runs."""
    assert len(bytes(frame)) == LEN
    limit(maps, pod, egress=RATE)
    results, before, after = burst_of_runs(run, prog, frame)
    assert [r.retval for r in results] == [passed] * PASSED + [dropped] * 2
    assert [r.how for r in results[PASSED:]] == ["drop"] * 2
    clock = clocks(maps, pod)[0]
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
    results = assert_policed(maps, run, "from_container", from_a(addr), POD_A, verdict, TC_ACT_SHOT)
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


def test_a_smaller_tolerance_lets_fewer_frames_in(maps, run):
    limit(maps, POD_A, egress=RATE, tolerance=LEN)  # half a second: two frames
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
    limit(maps, POD_B, ingress=RATE)  # B's ingress is shaped where the frames come back: from_nic
    results = assert_policed(maps, run, "from_container", from_a(POD_B["ip"]), POD_A, TC_ACT_REDIRECT, TC_ACT_SHOT)
    assert {(r.redirect_ifindex, r.how, r.mark) for r in results[:PASSED]} == {(NIC_IFINDEX, "egress", 0)}
    assert clocks(maps, POD_B) == (0, 0)


# Ingress: what a pod receives goes through its host veth's qdisc, the tbf
# that keeps its rate: never dropped here, and no clock.

NIC_HOOKS = {"from_nic": TC_ACT_REDIRECT, "from_nic_xdp": XDP_REDIRECT}  # a frame into a pod, directly


def assert_steered_to_the_qdisc(results, pod_ep=A) -> None:
    """Every run out of the pod's host veth (not into its peer), marked for
    to_container, rewritten for the pod."""
    for r in results:
        assert (r.retval, r.redirect_ifindex, r.how, r.mark) == (TC_ACT_REDIRECT, pod_ep.ifindex, "qdisc",
                                                                 MARK_FORWARDED)
        assert (r.frame.src, r.frame.dst) == (pod_ep.host_mac, pod_ep.pod_mac)
        assert checksums_ok(r.frame)


def test_frames_from_the_nic_for_a_shaped_pod_go_through_its_qdisc(maps, run):
    limit(maps, POD_A, ingress=RATE)
    results, _, _ = burst_of_runs(run, "from_nic", from_fabric())
    assert_steered_to_the_qdisc(results)
    assert {r.frame[IP].ttl for r in results} == {62}
    assert counted(maps, "FWD_TO_POD_SHAPED") == [(A.ifindex, TO_POD, 5)]
    assert counted(maps, "FWD_TO_POD") == counted(maps, "DROP_RATE_LIMIT") == []
    assert clocks(maps, POD_A) == (0, 0)


def test_snat_replies_for_a_shaped_pod_go_through_its_qdisc_translated(maps, run):
    reply = snat_reply(run)
    limit(maps, POD_A, ingress=RATE)
    results, _, _ = burst_of_runs(run, "from_nic", reply)
    assert_steered_to_the_qdisc(results)
    assert {(r.frame[IP].dst, r.frame[TCP].dport) for r in results} == {(POD_A["ip"], 40000)}
    assert counted(maps, "FWD_SNAT_REPLY") == [(A.ifindex, TO_POD, 5)]


@pytest.mark.parametrize("frame", ["vnet", "snat-reply"])
def test_xdp_passes_a_shaped_pods_frames_on_to_tc_counted_for_the_nic(maps, run, frame):
    """XDP cannot reach a qdisc: tc's from_nic, behind it, steers them."""
    sent = snat_reply(run) if frame == "snat-reply" else from_fabric()
    limit(maps, POD_A, ingress=RATE)
    results, _, _ = burst_of_runs(run, "from_nic_xdp", sent)
    assert {(r.retval, r.how) for r in results} == {(XDP_PASS, "pass")}
    assert {(r.frame.src, r.frame.dst, r.frame[IP].ttl) for r in results} == {(sent.src, sent.dst, sent[IP].ttl)}
    assert {(r.frame[IP].dst, checksums_ok(r.frame)) for r in results} == {(POD_A["ip"], True)}  # translated
    assert [(d, n) for _, d, n in counted(maps, "PASS_XDP_SHAPED")] == [(NIC, 5)]  # on the receiving device
    assert counted(maps, "FWD_TO_POD") == counted(maps, "FWD_SNAT_REPLY") == []


def test_pod_to_a_shaped_pod_goes_through_the_receivers_qdisc(maps, run):
    limit(maps, POD_B, ingress=RATE)
    results, _, _ = burst_of_runs(run, "from_container", from_a(POD_B["ip"]))
    assert_steered_to_the_qdisc(results, B)
    assert counted(maps, "FWD_LOCAL_SHAPED") == [(A.ifindex, FROM_POD, 5)]
    assert counted(maps, "FWD_LOCAL") == counted(maps, "DROP_RATE_LIMIT") == []


def test_a_limited_sender_is_policed_on_its_way_to_a_shaped_receiver(maps, run):
    limit(maps, POD_B, ingress=RATE)
    results = assert_policed(maps, run, "from_container", from_a(POD_B["ip"]), POD_A, TC_ACT_REDIRECT, TC_ACT_SHOT)
    assert_steered_to_the_qdisc(results[:PASSED], B)
    assert counted(maps, "DROP_RATE_LIMIT") == [(A.ifindex, FROM_POD, 2)]


def test_the_host_veth_lets_what_the_datapath_sent_through_and_unmarks_it(maps, run):
    limit(maps, POD_A, ingress=RATE)
    r = run("to_container", host_delivered(), mark=MARK_FORWARDED)
    assert (r.retval, r.mark) == (TC_ACT_OK, 0)
    assert maps.host_flows() == []  # not the host's delivery: not remembered
    assert not maps.endpoint(POD_A["ip"]).flags & M.EP_HOST_FLOWS


def test_what_the_host_stack_delivers_to_a_shaped_pod_passes_and_is_remembered(maps, run):
    limit(maps, POD_A, ingress=RATE)
    results, _, _ = burst_of_runs(run, "to_container", host_delivered())
    assert {(r.retval, r.mark, r.tstamp) for r in results} == {(TC_ACT_OK, 0, 0)}
    assert len(maps.host_flows()) == 1
    assert maps.endpoint(POD_A["ip"]).flags == M.EP_HOST_FLOWS | M.EP_BANDWIDTH
    assert counted(maps, "DROP_RATE_LIMIT") == []


@pytest.mark.parametrize("mark", [0, 0x4000, MARK_FORWARDED + 1])
def test_a_host_veth_changes_nothing_for_an_unlimited_pod(maps, run, mark):
    r = run("to_container", host_delivered(), mark=mark)
    assert (r.retval, r.tstamp, r.mark) == (TC_ACT_OK, 0, mark)
    assert len(maps.host_flows()) == 1  # whatever the mark


# Pods without a limit in a direction: the exact direct paths, nothing dropped.

@pytest.mark.parametrize("setup", ["no-limits", "entry-without-flag", "flag-without-entry", "ingress-only"])
def test_what_a_pod_without_an_egress_limit_sends_is_not_policed(maps, run, setup):
    if setup == "entry-without-flag":
        maps.put_bandwidth(POD_A["ip"], M.Bandwidth(egress_bytes_per_s=1, egress_burst_bytes=1))
    elif setup == "flag-without-entry":
        maps.update_endpoint_flags(POD_A["ip"], add=M.EP_BANDWIDTH)
    elif setup == "ingress-only":
        limit(maps, POD_A, ingress=1, tolerance=1)
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
        limit(maps, POD_A, egress=1, tolerance=1)
    results, _, _ = burst_of_runs(run, prog, from_fabric())
    assert {(r.retval, r.redirect_ifindex, r.how) for r in results} == {(NIC_HOOKS[prog], A.ifindex, "peer")}
    assert clocks(maps, POD_A) == (0, 0)
    assert counted(maps, "DROP_RATE_LIMIT") == []


@pytest.mark.parametrize("limited", ["sender-ingress-only", "receiver-egress-only"])
def test_limits_the_other_way_leave_pod_to_pod_traffic_alone(maps, run, limited):
    if limited == "sender-ingress-only":
        limit(maps, POD_A, ingress=1, tolerance=1)
    else:
        limit(maps, POD_B, egress=1, tolerance=1)
    results, _, _ = burst_of_runs(run, "from_container", from_a(POD_B["ip"]))
    assert {(r.retval, r.redirect_ifindex, r.how, r.tstamp, r.mark) for r in results} == {
        (TC_ACT_REDIRECT, B.ifindex, "peer", 0, 0)}
    assert counted(maps, "FWD_LOCAL") == [(A.ifindex, FROM_POD, 5)]


def test_the_reason_keeps_its_code():
    reason = by_name("DROP_RATE_LIMIT")
    assert (reason.code, reason.is_drop) == (78, True)
    assert reason.description == "above the pod's egress rate, which its own qdisc should have kept: policed"


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
    maps.put_bandwidth(POD_A["ip"], M.Bandwidth(125_000, 1_000_000, 100_000, 1_000_000))
    c = raw_bandwidth(maps, POD_A)
    assert (c.egress.bytes_per_s, c.egress.burst_ns, c.egress.next_ns) == (125_000, 800_000_000, 0)
    assert (c.ingress.bytes_per_s, c.ingress.burst_ns, c.ingress.next_ns) == (1_000_000, SECOND, 0)
    maps.put_bandwidth(POD_A["ip"], M.Bandwidth(ingress_bytes_per_s=65_536))
    c = raw_bandwidth(maps, POD_A)
    assert (c.egress.bytes_per_s, c.egress.burst_ns) == (0, 0)
    assert (c.ingress.bytes_per_s, c.ingress.burst_ns) == (65_536, SECOND)  # 64 KiB, the least


@pytest.mark.parametrize("rate,burst", [(70_001, 65_539), (999_999_937, 12_345_677), (1_000_000_000, 65_536),
                                        (125_000, 65_537), (7, 65_536)])
def test_odd_bursts_read_back_exactly(maps, rate, burst):
    bw = M.Bandwidth(rate, rate, burst, burst)
    maps.put_bandwidth(POD_A["ip"], bw)
    assert maps.bandwidth(POD_A["ip"]) == bw
    assert (bw.egress_burst_bytes, bw.ingress_burst_bytes) == (burst, burst)


@pytest.mark.parametrize("rate,burst", [
    (1000, 65_536),                 # a second is below 64 KiB: 64 KiB
    (65_536, 65_536),               # 64 KiB is a second
    (125_000, 65_536),              # 1 Mbit/s: 64 KiB
    (3_276_800, 65_536),            # 20 ms is 64 KiB
    (12_500_000, 250_000),          # 100 Mbit/s: 20 ms
    (1_250_000_000, 25_000_000),    # 10 Gbit/s: 20 ms
    (3_276_801, 65_537),            # 20 ms of a rate rounds up
])
def test_a_burst_of_zero_is_20ms_at_the_rate_at_least_64KiB_else_at_most_a_second(rate, burst):
    bw = M.Bandwidth(rate, rate)
    assert (bw.egress_burst_bytes, bw.ingress_burst_bytes) == (burst, burst)


def test_bursts_are_at_most_a_second_at_least_64KiB_and_an_unlimited_direction_has_none():
    assert M.Bandwidth(125_000, 0, 2**62, 5000) == M.Bandwidth(125_000, 0, 125_000, 0)
    assert M.Bandwidth(125_000, 0, 125_001).egress_burst_bytes == 125_000
    assert M.Bandwidth(125_000, 0, 124_999).egress_burst_bytes == 124_999
    assert M.Bandwidth(125_000, 0, 1).egress_burst_bytes == 65_536  # tbf holds no less than one packet
    assert M.Bandwidth(1000, 0, 5000).egress_burst_bytes == 65_536  # the least wins over the second
    assert M.Bandwidth().limited is False and M.Bandwidth(0, 0, 1, 1) == M.Bandwidth()


@pytest.mark.parametrize("field", [0, 1])
def test_rates_beyond_the_shapers_are_refused(field):
    rates = [M.RATE_MAX, M.RATE_MAX]
    assert M.Bandwidth(*rates).limited
    rates[field] += 1
    with pytest.raises(ValueError, match="at most 4294967295 bytes/s"):
        M.Bandwidth(*rates)


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
