"""Kubernetes bandwidth limits (runtimeConfig.bandwidth, the "bandwidth"
capability) enforced by vnetdp's datapath: a limited pod never gets more than
its rate in either direction, CHECK verifies the limits, other pods are not
affected. The datapath polices (this kernel has no fq for departure-time
pacing), and TCP through a policer stays well below the rate: the measured
fraction is printed, not asserted (README, Bandwidth)."""
from __future__ import annotations

import pytest

from lab_pods import address_of
from vnetdp.cni.spec import Code
from vnetdp.lab import cni, probe
from vnetdp.lab import plan as P

INGRESS, EGRESS = 40_000_000, 20_000_000  # bits/s


def limited(**rates) -> dict:
    return cni.network_config(capabilities={"bandwidth": True}, runtimeConfig={"bandwidth": rates})


def measured(src_ns: str, dst_ns: str, dst: str) -> float:
    result = probe.tcp_transfer(src_ns, dst_ns, dst, seconds=4)
    assert result.ok, result.detail
    return result.value * 1e9


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_a_limited_pod_never_exceeds_its_rate(lab, pods, direction):
    conf = limited(ingressRate=INGRESS, ingressBurst=0, egressRate=EGRESS, egressBurst=0)
    ns, added = pods.add(conf)
    address = address_of(added)
    if direction == "ingress":
        rate, want = measured(lab.plan.peer, ns, address), INGRESS
    else:
        rate, want = measured(ns, lab.plan.peer, str(P.PEER_IP)), EGRESS
    print(f"{direction}: {rate / 1e6:.1f} Mbit/s for a limit of {want / 1e6:.0f} ({rate / want:.0%})")
    assert 0.02 * want <= rate <= 1.1 * want  # limited, and still carrying traffic
    assert pods.call("CHECK", ns, conf).ok


def test_pods_without_limits_are_not_slowed(lab, pods):
    pods.add(limited(ingressRate=INGRESS, egressRate=EGRESS))
    unlimited = lab.plan.pod_ns(pods.vm, 1)
    rate = measured(lab.plan.peer, unlimited, str(lab.pod_address(pods.vm, 1)))
    assert rate > 20 * INGRESS


def test_check_finds_limits_that_differ_from_the_runtimes(lab, pods):
    ns, _ = pods.add(limited(ingressRate=INGRESS))
    check = pods.call("CHECK", ns, limited(ingressRate=2 * INGRESS))
    assert check.code == Code.CHECK_FAILED and "bandwidth" in check.output["msg"]


@pytest.mark.parametrize("rates", [{"ingressRate": -1}, {"egressRate": "10M"}, {"ingressBurst": 1.5}])
def test_bad_limits_are_code_7(lab, pods, rates):
    call = pods.call("ADD", pods.netns(), limited(**rates))
    assert call.code == Code.INVALID_CONFIG and "runtimeConfig.bandwidth" in call.output["msg"]
