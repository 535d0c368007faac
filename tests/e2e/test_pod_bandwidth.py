"""Kubernetes bandwidth limits (runtimeConfig.bandwidth, the "bandwidth"
capability) kept by vnetdp: a limited pod's TCP throughput is its rate
within 10% in either direction (tbf qdiscs, the datapath steering traffic
through them), CHECK verifies the limits and the qdiscs, other pods are not
affected."""
from __future__ import annotations

import pytest

from lab_pods import address_of
from vnetdp import naming
from vnetdp.cni.spec import Code
from vnetdp.lab import cni, probe
from vnetdp.lab import plan as P
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import in_ns

INGRESS, EGRESS = 40_000_000, 20_000_000  # bits/s


def limited(**rates) -> dict:
    return cni.network_config(capabilities={"bandwidth": True}, runtimeConfig={"bandwidth": rates})


def measured(src_ns: str, dst_ns: str, dst: str) -> float:
    result = probe.tcp_transfer(src_ns, dst_ns, dst, seconds=4)
    assert result.ok, result.detail
    return result.value * 1e9


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_a_limited_pod_gets_its_rate(lab, pods, direction):
    conf = limited(ingressRate=INGRESS, ingressBurst=0, egressRate=EGRESS, egressBurst=0)
    ns, added = pods.add(conf)
    address = address_of(added)
    if direction == "ingress":
        rate, want = measured(lab.plan.peer, ns, address), INGRESS
    else:
        rate, want = measured(ns, lab.plan.peer, str(P.PEER_IP)), EGRESS
    assert_within_10_percent(direction, rate, want)
    assert pods.call("CHECK", ns, conf).ok


def assert_within_10_percent(what: str, rate: float, want: int) -> None:
    print(f"{what}: {rate / 1e6:.1f} Mbit/s for a limit of {want / 1e6:.0f} ({rate / want:.0%})")
    assert 0.9 * want <= rate <= 1.1 * want


def test_a_pod_on_the_same_node_reaches_a_limited_pod_at_its_rate(lab, pods):
    """Local switching steers into the receiver's host veth, through its tbf."""
    ns, added = pods.add(limited(ingressRate=INGRESS))
    before = counters(lab, pods.vm)
    rate = measured(lab.plan.pod_ns(pods.vm, 1), ns, address_of(added))
    assert_within_10_percent("pod to pod", rate, INGRESS)
    assert (counters(lab, pods.vm) - before)["FWD_LOCAL_SHAPED"] > 100


def test_with_xdp_on_the_nic_a_limited_pod_gets_its_ingress_rate(lab, pods, node_set):
    """XDP passes the pod's frames on to tc, which steers them through the tbf."""
    node_set(pods.vm, nicAttach="xdp")
    ns, added = pods.add(limited(ingressRate=INGRESS))
    before = counters(lab, pods.vm)
    rate = measured(lab.plan.peer, ns, address_of(added))
    assert_within_10_percent("ingress with XDP", rate, INGRESS)
    moved = counters(lab, pods.vm) - before
    assert moved["PASS_XDP_SHAPED"] > 100 and moved["FWD_TO_POD_SHAPED"] > 100


def test_a_pod_that_removes_its_shaper_is_still_policed_and_check_says_so(lab, pods):
    conf = limited(egressRate=EGRESS)
    ns, _ = pods.add(conf)
    in_ns(ns, ["tc", "qdisc", "del", "dev", "eth0", "root"])
    check = pods.call("CHECK", ns, conf)
    assert check.code == Code.CHECK_FAILED and "egress rate" in check.output["msg"]
    before = counters(lab, pods.vm)
    rate = measured(ns, lab.plan.peer, str(P.PEER_IP))
    print(f"egress without its shaper: {rate / 1e6:.1f} Mbit/s for a limit of {EGRESS / 1e6:.0f}")
    assert rate <= 1.1 * EGRESS
    assert (counters(lab, pods.vm) - before)["DROP_RATE_LIMIT"] > 0


def test_check_finds_the_host_side_shaper_gone(lab, pods):
    conf = limited(ingressRate=INGRESS)
    ns, _ = pods.add(conf)
    in_ns(pods.vm.ns, ["tc", "qdisc", "del", "dev", naming.host_ifname(ns, "eth0"), "root"])
    check = pods.call("CHECK", ns, conf)
    assert check.code == Code.CHECK_FAILED and "ingress rate" in check.output["msg"]


def test_pods_without_limits_are_not_slowed(lab, pods):
    pods.add(limited(ingressRate=INGRESS, egressRate=EGRESS))
    unlimited = lab.plan.pod_ns(pods.vm, 1)
    rate = measured(lab.plan.peer, unlimited, str(lab.pod_address(pods.vm, 1)))
    assert rate > 20 * INGRESS


def test_check_finds_limits_that_differ_from_the_runtimes(lab, pods):
    ns, _ = pods.add(limited(ingressRate=INGRESS))
    check = pods.call("CHECK", ns, limited(ingressRate=2 * INGRESS))
    assert check.code == Code.CHECK_FAILED and "bandwidth" in check.output["msg"]


@pytest.mark.parametrize("rates", [{"ingressRate": -1}, {"egressRate": "10M"}, {"ingressBurst": 1.5},
                                   {"egressRate": 2**32 * 8}])
def test_bad_limits_are_code_7(lab, pods, rates):
    call = pods.call("ADD", pods.netns(), limited(**rates))
    assert call.code == Code.INVALID_CONFIG and "runtimeConfig.bandwidth" in call.output["msg"]
