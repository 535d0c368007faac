"""`vnetdp metrics` (vnetdp.ops.metrics) on a fake node: the families a
scrape gets, parsed back with prometheus_client's parser; CNI call
histograms built from the call spool (counts equal the calls spooled,
across rotations and scrapes); the listen address policy; the HTTP server."""
from __future__ import annotations

import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vnetdp.cni import logs
from vnetdp.ops import metrics


def record(command="ADD", code=0, total=0.04, plugin="vnetdp", **phases) -> dict:
    return {"time": 1.0, "plugin": plugin, "command": command, "container_id": "c1", "ifname": "eth0", "pod": "",
            "result": "error" if code else "ok", "code": code, "duration_s": total,
            "phases": {**phases, "total": total}}


class FakeSource:
    def __init__(self, snapshot: metrics.Snapshot | None = None, calls=()) -> None:
        self.snap = snapshot or metrics.Snapshot()
        self.calls = list(calls)

    def snapshot(self) -> metrics.Snapshot:
        return self.snap

    def new_calls(self) -> list[dict]:
        out, self.calls = self.calls, []
        return out


class SpoolSource(FakeSource):
    """Calls from a real spool, the node from a fake snapshot."""

    def __init__(self, state_dir) -> None:
        super().__init__()
        self.reader = logs.SpoolReader(logs.CallSpool(str(state_dir)))

    def new_calls(self) -> list[dict]:
        return self.reader.read()


def scrape(collector) -> dict[str, dict[tuple, float]]:
    """sample name -> {labels (sorted items): value}."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.exposition(collector)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(**kw) -> tuple:
    return tuple(sorted(kw.items()))


NODE = metrics.Snapshot(
    counters=[
        {"interface": "vnd0123456789a", "namespace": "default", "pod": "web-0", "direction": "to-pod",
         "reason": "FWD_TO_POD", "packets": 1000, "bytes": 98000},
        {"interface": "vnd0123456789a", "namespace": "default", "pod": "web-0", "direction": "from-pod",
         "reason": "DROP_SNAT_QUOTA", "packets": 3, "bytes": 180},
        {"interface": "vnd0bbbbbbbbbb", "namespace": "", "pod": "", "direction": "from-pod",
         "reason": "DROP_SNAT_TABLE_FULL", "packets": 2, "bytes": 120},
        {"interface": "eth0", "namespace": "", "pod": "", "direction": "nic", "reason": "PASS_NIC",
         "packets": 7, "bytes": 700},
    ],
    endpoints=2,
    pools=[{"subnet": "10.3.0.0/16", "gateway": "10.3.0.1", "size": 10, "used": 3, "free": 7}],
    snat={"entries": 40, "capacity": 131072, "fill": 0.0003},
    policy_drops=[{"address": "10.3.1.5", "pod": "default/web-0", "ruleSet": "web", "rule": "deny-8080",
                   "direction": "Inbound", "packets": 4, "bytes": 240}])


def test_a_scrape_has_the_node_counters_pools_and_snat_fill():
    got = scrape(metrics.NodeCollector(FakeSource(NODE)))
    pod = dict(interface="vnd0123456789a", namespace="default", pod="web-0")
    assert got["vnetdp_datapath_packets_total"][labels(**pod, direction="to-pod", reason="FWD_TO_POD")] == 1000
    assert got["vnetdp_datapath_bytes_total"][labels(**pod, direction="to-pod", reason="FWD_TO_POD")] == 98000
    assert got["vnetdp_datapath_packets_total"][labels(interface="eth0", namespace="", pod="", direction="nic",
                                                       reason="PASS_NIC")] == 7
    snat_drops = got["vnetdp_snat_drops_total"]
    assert snat_drops[labels(reason="DROP_SNAT_QUOTA")] == 3
    assert snat_drops[labels(reason="DROP_SNAT_TABLE_FULL")] == 2
    assert snat_drops[labels(reason="DROP_SNAT_NO_PORT")] == 0  # every DROP_SNAT_* reason, also at 0
    assert got["vnetdp_endpoints"][()] == 2
    subnet = labels(subnet="10.3.0.0/16")
    assert (got["vnetdp_ipam_pool_size"][subnet], got["vnetdp_ipam_pool_used"][subnet],
            got["vnetdp_ipam_pool_free"][subnet]) == (10, 3, 7)
    assert (got["vnetdp_snat_entries"][()], got["vnetdp_snat_capacity"][()]) == (40, 131072)
    assert set(got["vnetdp_metrics_source_up"].values()) == {1.0}
    assert got["vnetdp_policy_drops_total"] == {labels(address="10.3.1.5", pod="default/web-0", rule_set="web",
                                                       rule="deny-8080", direction="Inbound"): 4}


def test_a_source_that_cannot_be_read_is_down_and_its_families_absent():
    snap = metrics.Snapshot(pools=NODE.pools, errors={"datapath": "no maps pinned", "snat": "no maps pinned"})
    got = scrape(metrics.NodeCollector(FakeSource(snap)))
    assert got["vnetdp_metrics_source_up"] == {labels(source="datapath"): 0, labels(source="ipam"): 1,
                                               labels(source="snat"): 0, labels(source="policy"): 1,
                                               labels(source="spool"): 1}
    assert "vnetdp_datapath_packets_total" not in got and "vnetdp_snat_entries" not in got
    assert "vnetdp_ipam_pool_free" in got


def test_call_histograms_per_phase_and_errors_per_code():
    calls = [record(total=0.004, ipam=0.001, endpoint=0.002), record(total=0.3, ipam=0.2, endpoint=0.05),
             record("DEL", total=0.02, endpoint=0.01), record(code=100, total=0.01, ipam=0.009),
             record(code=100, total=0.01), record(code=4, total=0.001)]
    got = scrape(metrics.NodeCollector(FakeSource(NODE, calls)))
    count, buckets = got["vnetdp_cni_call_duration_seconds_count"], got["vnetdp_cni_call_duration_seconds_bucket"]
    add = dict(plugin="vnetdp", command="ADD")
    assert count[labels(**add, phase="total")] == 5
    assert count[labels(**add, phase="ipam")] == 3 and count[labels(**add, phase="endpoint")] == 2
    assert count[labels(plugin="vnetdp", command="DEL", phase="total")] == 1
    assert buckets[labels(**add, phase="total", le="0.005")] == 2   # 0.004 and 0.001
    assert buckets[labels(**add, phase="total", le="0.01")] == 4
    assert buckets[labels(**add, phase="total", le="0.25")] == 4
    assert buckets[labels(**add, phase="total", le="+Inf")] == 5
    assert got["vnetdp_cni_call_duration_seconds_sum"][labels(**add, phase="total")] == pytest.approx(0.325)
    assert got["vnetdp_cni_errors_total"] == {labels(**add, code="100"): 2, labels(**add, code="4"): 1}


def test_histogram_counts_equal_the_calls_spooled_across_scrapes_and_rotations(tmp_path):
    spool = logs.CallSpool(str(tmp_path), max_bytes=2000, backups=2)
    collector = metrics.NodeCollector(SpoolSource(tmp_path))
    total = labels(plugin="vnetdp", command="ADD", phase="total")
    made = 0
    for batch in (3, 0, 7, 12, 1, 19):  # ~200-byte records: up to two rotations between scrapes
        for _ in range(batch):
            made += 1
            assert spool.append({**record(ipam=0.001, endpoint=0.02), "time": float(made)})
        got = scrape(collector)
        assert got["vnetdp_cni_call_duration_seconds_count"].get(total, 0) == made
    assert (tmp_path / (logs.SPOOL_FILE + ".2")).exists()


def test_a_fresh_collector_counts_what_the_spool_still_holds(tmp_path):
    spool = logs.CallSpool(str(tmp_path))
    for code in (0, 0, 7):
        spool.append(record(code=code))
    got = scrape(metrics.NodeCollector(SpoolSource(tmp_path)))
    assert got["vnetdp_cni_call_duration_seconds_count"][labels(plugin="vnetdp", command="ADD",
                                                                phase="total")] == 3
    assert got["vnetdp_cni_errors_total"] == {labels(plugin="vnetdp", command="ADD", code="7"): 1}


def test_records_that_are_not_calls_are_skipped():
    stats = metrics.CallStats()
    stats.add_all([{"n": 1}, {"plugin": "vnetdp", "command": "ADD", "phases": "x"}, record()])
    assert list(stats.durations) == [("vnetdp", "ADD", "total")]


@pytest.mark.parametrize("addr,allowed", [
    ("127.0.0.1:9464", True), ("localhost:9464", True), ("[::1]:9464", True), ("127.0.0.53:1", True),
    ("0.0.0.0:9464", False), (":9464", False), ("10.3.0.4:9464", False), ("[::]:9464", False),
])
def test_only_loopback_unless_allowed(addr, allowed):
    if allowed:
        assert metrics.check_listen(addr, allow_remote=False)[1] > 0
    else:
        with pytest.raises(metrics.RemoteRefused, match="--allow-remote"):
            metrics.check_listen(addr, allow_remote=False)
        assert metrics.check_listen(addr, allow_remote=True)[1] == int(addr.rpartition(":")[2])


@pytest.mark.parametrize("addr", ["9464", "host:", "host:http", "127.0.0.1:70000"])
def test_a_listen_address_must_be_host_and_port(addr):
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.check_listen(addr, allow_remote=True)


def test_the_http_server_serves_a_fresh_scrape_each_time():
    source = FakeSource(NODE, [record()])
    httpd = metrics.http_server(metrics.NodeCollector(source), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/metrics"

        def count() -> float:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                        if s.name == "vnetdp_cni_call_duration_seconds_count" and s.labels["phase"] == "total")

        assert count() == 1
        source.calls = [record(), record()]
        assert count() == 3
    finally:
        httpd.shutdown()
        httpd.server_close()
