"""The benchmark harness in its tiny mode (one round, tools running briefly):
every topology really carries each path's traffic through the datapath it
claims, the limit is what every ratio is stated against, and the new tools
report sane numbers. No timing is asserted."""
from __future__ import annotations

import os

import pytest

from bench import metrics, report, run, stats

LAB = [t for t in run.TOPOLOGIES if t != "direct"]
PATHS = ("vnet", "local", "internet")


@pytest.fixture(scope="module")
def results():
    return run.run("tiny")


def samples(results, metric):
    return [s for s in results["samples"] if s["metric"] == metric]


def test_only_br_netfilter_may_be_missing(results):
    """bridge-nf needs br_netfilter built in or loaded; the harness never loads it."""
    assert set(results["unavailable"]) <= {"bridge-nf"}, results["unavailable"]
    assert set(results["topologies"]) | set(results["unavailable"]) == set(run.TOPOLOGIES)


def test_every_topology_carries_every_path(results):
    built = [t for t in LAB if t in results["topologies"]]
    expected = {(t, p, "flood") for t in built for p in PATHS}
    expected |= {(t, "vnet", m) for t in built for m in ("tcp_stream", "tcp_rr_same", "tcp_rr_cross")}
    expected |= {(t, "internet", m) for t in built for m in ("new_flows", "new_flows_udp")}
    expected |= {("direct", "veth", m) for m in ("tcp_stream", "flood")}
    assert {(s["topology"], s["path"], s["metric"]) for s in results["samples"]} >= expected
    assert all(s["value"] for s in results["samples"]), [s for s in results["samples"] if not s["value"]]


@pytest.mark.parametrize("topology", ["bridge-nf", "bridge", "vnetdp-tc", "vnetdp-xdp"])
def test_traffic_went_through_the_claimed_datapath(results, topology):
    """Floods on every path: bridge's ports' and NAT rules' counters; vnetdp's BPF counters."""
    if topology in results["unavailable"]:
        pytest.skip(results["unavailable"][topology])
    floods = [s for s in samples(results, "flood") if s["topology"] == topology]
    assert len(floods) == len(PATHS) and all(s["datapath_packets"] > 1000 for s in floods), floods


def test_bridge_variants_differ_only_in_br_netfilter(results):
    assert results["topologies"]["bridge"]["bridge_nf_call_iptables"] in (0, None)
    if "bridge-nf" in results["topologies"]:
        assert results["topologies"]["bridge-nf"]["bridge_nf_call_iptables"] == 1


def test_limit_and_direct_have_no_host_datapath(results):
    """Nor do the bridges: vnetdp (whose agent configures its node at start) is
    installed only where it is measured."""
    assert results["topologies"]["limit"]["client_links"] == ["eth0", "lo", "local0"]
    assert {t: d["vnetdp_installed"] for t, d in results["topologies"].items() if t in LAB} == \
        {t: t.startswith("vnetdp") for t in LAB if t in results["topologies"]}
    assert results["topologies"]["direct"]["client_links"] == ["eth0", "lo"]


def test_flood_reports_rate_loss_and_cpu(results):
    for s in samples(results, "flood"):
        assert s["value"] > 0 and s["sent_pps"] >= s["value"], s
        assert 0 <= s["loss"] <= 1, s
        assert s["sender_cpu_ns"] > 0, s


def test_pinned_latency_has_p50_and_p99(results):
    for s in samples(results, "tcp_rr_same") + samples(results, "tcp_rr_cross"):
        assert 0 < s["value"] <= s["p99"], s


def test_new_flows_through_snat(results):
    """Failures are counted, not asserted, for vnetdp: its SNAT refuses new flows
    beyond the pod's quota or a destination's ports, which a flood of connections
    to one server can reach; the lab's own hosts and MASQUERADE must not fail."""
    for s in samples(results, "new_flows"):
        assert s["value"] > 0 and s["client_cpu_ns"] > 0, s
        assert s["failures"] == 0 or s["topology"].startswith("vnetdp"), s


def test_new_udp_flows_all_arrive_as_new_flows(results):
    """Every datagram of the UDP new-flow test reaches the server's host, each to
    a port of its own, through SNAT: vnetdp's counters moved for each one."""
    for s in samples(results, "new_flows_udp"):
        assert s["value"] > 0 and s["sender_cpu_ns"] > 0, s
        assert s["loss"] == 0, s
        if s["topology"].startswith("vnetdp"):
            assert s["datapath_packets"] >= metrics.NEW_FLOWS_UDP, s


def test_ratios_are_against_the_limit(results):
    table = stats.summary(results)
    limit = table[("flood", "vnet")]["limit"]["value"]
    tc = table[("flood", "vnet")]["vnetdp-tc"]["value"]
    assert stats.ratio(tc, limit) == pytest.approx(tc.median / limit.median)
    added = stats.added_cost(results)[("flood", "vnet")]
    assert "limit" not in added and set(added) >= {"bridge", "vnetdp-tc", "vnetdp-xdp"}
    tc_sample = next(s for s in samples(results, "flood") if s["topology"] == "vnetdp-tc" and s["path"] == "vnet")
    limit_sample = next(s for s in samples(results, "flood") if s["topology"] == "limit" and s["path"] == "vnet")
    assert added["vnetdp-tc"].median == pytest.approx(tc_sample["sender_cpu_ns"] - limit_sample["sender_cpu_ns"])


def test_reports_are_written(results, tmp_path):
    paths = report.write(results, str(tmp_path))
    assert {os.path.basename(p) for p in paths} >= {"results.json", "results.md", "tcp_stream.png", "flood.png"}
    md = open(tmp_path / "results.md").read()
    assert "| vnet | tcp_stream" in md and "| vnetdp-tc/limit |" in md and "Added cost over `limit`" in md
    assert "bare veth" in md
    assert set(metrics.METRICS) <= {s["metric"] for s in results["samples"]}
