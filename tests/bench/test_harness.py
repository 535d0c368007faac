"""The benchmark harness in its tiny mode (one round, one second): every
topology really carries each path's traffic through the datapath it claims.
No timing is asserted."""
from __future__ import annotations

import os

import pytest

from bench import report, run


@pytest.fixture(scope="module")
def results():
    return run.run("tiny")


def test_every_topology_carries_every_path(results):
    samples = results["samples"]
    assert {(s["topology"], s["path"], s["metric"]) for s in samples} >= {
        (t, p, "tcp_stream") for t in run.TOPOLOGIES for p in ("vnet", "local", "internet")}
    assert all(s["value"] for s in samples), [s for s in samples if not s["value"]]
    assert all(s["failures"] == 0 for s in samples if s["metric"] == "conn_rate")


@pytest.mark.parametrize("topology", ["bridge", "vnetdp-tc", "vnetdp-xdp"])
def test_traffic_went_through_the_claimed_datapath(results, topology):
    """bridge: its ports' and NAT rules' counters; vnetdp: its BPF counters."""
    for s in results["samples"]:
        if s["topology"] == topology and s["metric"] == "tcp_stream":
            assert s["datapath_packets"] > 1000, s


def test_direct_has_no_host_in_between(results):
    assert results["direct_interfaces"] == ["eth0", "lo"]


def test_reports_are_written(results, tmp_path):
    paths = report.write(results, str(tmp_path))
    assert {os.path.basename(p) for p in paths} >= {"results.json", "results.md", "tcp_stream.png"}
    assert "| vnet | tcp_stream" in open(tmp_path / "results.md").read()
