"""Day-two operations against the session's lab (VM 2): `vnetdp status`,
`endpoints`, `stats` and `metrics`, human and JSON, run in the VM's
namespace as on a node (and with --netns from outside); their counters
against the packets sent; the CNI call histograms and error counts against
the calls made; the plugins' JSON log lines in the lab's log directory."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import IPRoute

from lab_pods import address_of
from vnetdp import naming, netns
from vnetdp.cni.spec import Code
from vnetdp.datapath import attach
from vnetdp.lab import cni
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns

PINGS = 1000
METRICS_PORT = 9464  # the default, inside VM 2's namespace


def vnetdp(lab, vm, *args: str, inside: bool = True) -> subprocess.CompletedProcess:
    """`vnetdp ARGS` for VM ``vm``: run in its namespace as on a node, or from
    the host with --netns (``inside=False``)."""
    node = ["--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)]
    argv = [sys.executable, "-m", "vnetdp.cli", *args, *node]
    if inside:
        return in_ns(vm.ns, argv, check=False, timeout=60)
    proc = subprocess.run([*argv, "--netns", vm.ns], capture_output=True, text=True, timeout=60)
    return proc


def as_json(lab, vm, *args: str, inside: bool = True):
    proc = vnetdp(lab, vm, *args, "--json", inside=inside)
    assert proc.returncode in (0, 2), proc.stderr
    return json.loads(proc.stdout)


def pod1(lab):
    """VM 2's session pod: (container ID, address, host veth)."""
    vm = lab.plan.vm(2)
    ns = lab.plan.pod_ns(vm, 1)
    return ns, str(lab.pod_address(vm, 1)), naming.host_ifname(ns, "eth0")


def counter(sample: dict, interface: str, direction: str, reason: str) -> int:
    for e in sample["endpoints"]:
        if e["interface"] == interface:
            return sum(c["packets"] for c in e["counters"] if (c["direction"], c["reason"]) == (direction, reason))
    return 0


def endpoint_row(rows: list[dict], address: str) -> dict:
    [row] = [r for r in rows if r["address"] == address]
    return row


def ping(lab, address: str, count: int, interval: str) -> None:
    out = in_ns(lab.plan.peer, ["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1", address],
                timeout=count * float(interval) + 30).stdout
    assert f"{count} received" in out, out


# --- metrics helpers -----------------------------------------------------------------------
def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape_once(lab, vm) -> dict:
    proc = vnetdp(lab, vm, "metrics", "--once")
    assert proc.returncode == 0, proc.stderr
    return samples(proc.stdout)


@contextlib.contextmanager
def metrics_server(lab, vm) -> Iterator:
    """`vnetdp metrics` serving in VM 2's namespace (default listen address);
    yields a scrape function."""
    proc = subprocess.Popen(["ip", "netns", "exec", vm.ns, sys.executable, "-m", "vnetdp.cli", "metrics",
                             "--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def scrape() -> dict:
        with netns.enter(vm.ns):
            text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
        return samples(text)

    try:
        for _ in range(100):
            try:
                scrape()
                break
            except OSError:
                assert proc.poll() is None, "vnetdp metrics exited"
                time.sleep(0.1)
        yield scrape
    finally:
        proc.terminate()
        proc.wait(10)


ADD_TOTAL = dict(plugin="vnetdp", command="ADD", phase="total")


# --- status --------------------------------------------------------------------------------
@pytest.mark.parametrize("inside", [True, False], ids=["in-the-vm", "with-netns"])
def test_status_of_a_lab_vm(lab, inside):
    vm = lab.plan.vm(2)
    s = as_json(lab, vm, "status", inside=inside)
    # Other tests may leave the SNAT table busy for a while; nothing else may be wrong.
    assert [p for p in s["problems"] if not p.startswith("SNAT table")] == [], s["problems"]
    assert s["programs"]["build"] and s["programs"]["build"] in s["programs"]["builds"]
    assert s["nic"]["name"] == "eth0" and s["nic"]["primary_ip"] == str(vm.primary)
    [nic] = s["nic"]["attachments"]
    assert nic["hook"] == "ingress" and nic["mechanism"] in ("tcx", "clsact") and nic["program"] == "from_nic"
    assert nic["prog_id"] == s["programs"]["programs"]["from_nic"]
    assert s["pods"]["host_veths"] == s["pods"]["attached"] == s["pods"]["endpoints"] >= 1
    assert s["agent"]["alive"], s["agent"]
    [pool] = s["pools"]
    assert ipaddress.IPv4Network(pool["subnet"]) == P.VNET and pool["size"] == lab.plan.pool
    assert pool["used"] + pool["free"] == pool["size"] and pool["used"] >= 1
    assert 0 <= s["snat"]["entries"] <= s["snat"]["capacity"] and s["snat"]["capacity"] > 0
    assert s["settings"]["master"] == "eth0"
    assert s["netns"] == (None if inside else vm.ns)
    human = vnetdp(lab, vm, "status", inside=inside)
    assert human.returncode == (0 if s["healthy"] else 2)
    lines = human.stdout.splitlines()
    assert lines[0] == f"node:      {s['verdict']}"
    assert any(line.split()[:4] == ["NIC", "eth0", "ingress", nic["mechanism"]] for line in lines), human.stdout
    assert any(line.split()[:4] == [pool["subnet"], str(pool["size"]), str(pool["used"]), str(pool["free"])]
               for line in lines), human.stdout
    assert f"agent:     alive ({lab.plan.state_dir(vm)}/agent.sock)" in lines


def test_status_finds_a_pod_without_its_programs(lab, pods):
    vm = pods.vm
    ns, _ = pods.add()
    name = naming.host_ifname(ns, "eth0")
    with netns.enter(vm.ns), IPRoute() as ipr:
        attach.detach(ipr.link_lookup(ifname=name)[0], "egress", lab.node(vm).bpffs.link_pin(name, "egress"))
    s = as_json(lab, vm, "status")
    assert not s["healthy"] and f"{name} (egress)" in s["verdict"]
    assert vnetdp(lab, vm, "status").returncode == 2
    assert pods.call("DEL", ns).ok
    assert f"{name}" not in as_json(lab, vm, "status")["verdict"]


# --- endpoints -----------------------------------------------------------------------------
def test_endpoints_list_each_pod_with_its_record_and_datapath(lab, pods):
    vm = pods.vm
    ns, added = pods.add(args="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
    address = address_of(added)
    rows = as_json(lab, vm, "endpoints")
    row = endpoint_row(rows, address)
    with netns.enter(ns), IPRoute() as ipr:
        pod_mac = ipr.get_links(ifname="eth0")[0].get_attr("IFLA_ADDRESS")
    assert (row["container_id"], row["ifname"], row["namespace"], row["pod"], row["owner"]) == \
        (ns, "eth0", "shop", "web-0", "cni")
    assert (row["pod_mac"], row["host_veth"], row["in_datapath"]) == (pod_mac, naming.host_ifname(ns, "eth0"), True)
    session_ns, session_address, session_veth = pod1(lab)
    session = endpoint_row(rows, session_address)
    assert (session["container_id"], session["host_veth"], session["owner"]) == (session_ns, session_veth, "cni")
    human = vnetdp(lab, vm, "endpoints").stdout.splitlines()
    assert human[0].split()[:3] == ["CONTAINER", "POD", "OWNER"]
    [line] = [x for x in human if address in x.split()]
    assert line.split()[:6] == [ns, "shop/web-0", "cni", address, pod_mac, naming.host_ifname(ns, "eth0")]


# --- counters ------------------------------------------------------------------------------
def drops(stats: dict, veth: str) -> dict[str, int]:
    """Drops on ``veth`` by reason, but for the pod's own IPv6 router
    solicitations (DROP_UNSUPPORTED_L3), which come when they come."""
    return {c["reason"]: c["packets"] for e in stats["endpoints"] if e.get("interface") == veth
            for c in e["counters"] if c["drop"] and c["reason"] != "DROP_UNSUPPORTED_L3"}



def test_pings_to_a_pod_are_counted_in_stats_and_endpoints(lab):
    vm = lab.plan.vm(2)
    _, address, veth = pod1(lab)
    stats0, rows0 = as_json(lab, vm, "stats"), as_json(lab, vm, "endpoints")
    ping(lab, address, PINGS, "0.002")
    stats1, rows1 = as_json(lab, vm, "stats"), as_json(lab, vm, "endpoints")
    assert counter(stats1, veth, "to-pod", "FWD_TO_POD") - counter(stats0, veth, "to-pod", "FWD_TO_POD") == PINGS
    assert counter(stats1, veth, "from-pod", "FWD_VNET") - counter(stats0, veth, "from-pod", "FWD_VNET") == PINGS
    before, after = endpoint_row(rows0, address), endpoint_row(rows1, address)
    assert after["directions"]["to-pod"]["packets"] - before["directions"]["to-pod"]["packets"] == PINGS
    assert after["directions"]["from-pod"]["packets"] - before["directions"]["from-pod"]["packets"] == PINGS
    assert after["packets"] - before["packets"] == 2 * PINGS
    assert drops(stats1, veth) == drops(stats0, veth)  # no ping dropped
    assert after["bytes"] - before["bytes"] >= 2 * PINGS * 84  # ICMP echo: 84 bytes of IPv4 each way
    [entry] = [e for e in stats1["endpoints"] if e["interface"] == veth]
    assert entry["kind"] == "pod" and entry["address"] == address
    human = vnetdp(lab, vm, "stats").stdout.splitlines()
    [line] = [x for x in human if x.split()[:1] == [veth] and "FWD_TO_POD" in x.split()]
    assert int(line.split()[-2]) == counter(stats1, veth, "to-pod", "FWD_TO_POD")


def test_stats_watch_reports_rates(lab):
    vm = lab.plan.vm(2)
    _, address, veth = pod1(lab)
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.plan.peer, "ping", "-n", "-q", "-c", "400", "-i", "0.01",
                               address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = vnetdp(lab, vm, "stats", "--watch", "1", "--count", "2", "--json")
    finally:
        pinger.wait(30)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(reports) == 2 and all(0.9 <= r["interval_s"] <= 2 for r in reports)
    rates = [c["packets_per_s"] for r in reports for e in r["endpoints"] if e["interface"] == veth
             for c in e["counters"] if c["reason"] == "FWD_TO_POD"]
    assert rates and max(rates) > 20, rates  # ~100 a second
    human = vnetdp(lab, vm, "stats", "--watch", "0.5", "--count", "1").stdout.splitlines()
    assert human[0].endswith("s)") and human[1].split()[-2:] == ["PKTS/S", "BYTES/S"]


# --- metrics -------------------------------------------------------------------------------
def test_metrics_match_what_the_other_commands_show(lab):
    vm = lab.plan.vm(2)
    _, address, veth = pod1(lab)
    ping(lab, address, 10, "0.01")  # the counter exists, whatever ran before
    s, sample = as_json(lab, vm, "status"), as_json(lab, vm, "stats")
    found = scrape_once(lab, vm)
    [entry] = [e for e in sample["endpoints"] if e["interface"] == veth]
    pod_labels = dict(interface=veth, namespace=entry["namespace"], pod=entry["pod"])
    assert value(found, "vnetdp_datapath_packets_total", **pod_labels, direction="to-pod",
                 reason="FWD_TO_POD") == counter(sample, veth, "to-pod", "FWD_TO_POD")
    assert value(found, "vnetdp_datapath_bytes_total", **pod_labels, direction="to-pod", reason="FWD_TO_POD") > 0
    [pool] = s["pools"]
    for name in ("size", "used", "free"):
        assert value(found, f"vnetdp_ipam_pool_{name}", subnet=pool["subnet"]) == pool[name]
    assert value(found, "vnetdp_snat_capacity") == s["snat"]["capacity"]
    assert value(found, "vnetdp_endpoints") == s["pods"]["endpoints"]
    assert ("vnetdp_snat_drops_total", frozenset({("reason", "DROP_SNAT_TABLE_FULL")})) in found
    for source in ("datapath", "ipam", "snat", "policy", "spool"):
        assert value(found, "vnetdp_metrics_source_up", source=source) == 1


def test_add_latency_histogram_counts_each_add_per_phase(lab, pods):
    vm = pods.vm
    adds = 3
    with metrics_server(lab, vm) as scrape:
        before, once_before = scrape(), scrape_once(lab, vm)
        for _ in range(adds):
            pods.add()
        after, once_after = scrape(), scrape_once(lab, vm)
    for phase in ("total", "ipam", "node", "veth", "attach"):  # the phases: IPAM, veth and
        labels = {**ADD_TOTAL, "phase": phase}                 # addresses, attach, total
        name = "vnetdp_cni_call_duration_seconds_count"
        assert value(after, name, **labels) - value(before, name, **labels) == adds, phase
        assert value(once_after, name, **labels) - value(once_before, name, **labels) == adds, phase
        inf = value(after, "vnetdp_cni_call_duration_seconds_bucket", **labels, le="+Inf")
        assert inf == value(after, name, **labels)
    assert value(after, "vnetdp_cni_call_duration_seconds_sum", **ADD_TOTAL) > \
        value(before, "vnetdp_cni_call_duration_seconds_sum", **ADD_TOTAL)


def test_failing_adds_are_counted_per_code(lab, pods):
    vm = pods.vm
    errors = dict(plugin="vnetdp", command="ADD")
    with metrics_server(lab, vm) as scrape:
        before = scrape()
        gone = lab.cni(vm, "ADD", container_id="vnd-ops-fail", pod_netns="/run/netns/vnd-no-such-pod")
        assert gone.code == Code.INVALID_ENV
        bad = pods.call("ADD", pods.netns(), cni.network_config(nicAttach="ebpf"))
        assert bad.code == Code.INVALID_CONFIG
        after = scrape()
    for code in (Code.INVALID_ENV, Code.INVALID_CONFIG):
        assert value(after, "vnetdp_cni_errors_total", **errors, code=str(int(code))) - \
            value(before, "vnetdp_cni_errors_total", **errors, code=str(int(code))) == 1
    name = "vnetdp_cni_call_duration_seconds_count"
    assert value(after, name, **ADD_TOTAL) - value(before, name, **ADD_TOTAL) == 2  # failed calls are timed too


def test_metrics_refuses_a_remote_address_unless_allowed(lab):
    proc = vnetdp(lab, lab.plan.vm(2), "metrics", "--listen", f"{lab.plan.vm(2).primary}:{METRICS_PORT}")
    assert proc.returncode == 1 and "--allow-remote" in proc.stderr


# --- logs ----------------------------------------------------------------------------------
def log_lines(lab, vm, name: str = "vnetdp.log") -> list[dict]:
    with open(os.path.join(lab.log_dir(vm), name)) as f:
        return [json.loads(line) for line in f]


def test_each_call_logs_one_json_record_in_the_labs_log_dir(lab, pods):
    vm = pods.vm
    ns, added = pods.add(args="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")
    failed = pods.call("ADD", pods.netns(), cni.network_config(nicAttach="ebpf"))
    assert pods.call("DEL", ns).ok
    calls = [x for x in log_lines(lab, vm) if x.get("event") == "cni-call"]
    [add] = [x for x in calls if x["container_id"] == ns and x["command"] == "ADD"]
    assert (add["level"], add["plugin"], add["pod"], add["result"], add["code"]) == \
        ("info", "vnetdp", "shop/web-1", "ok", 0)
    assert {"ipam", "node", "veth", "attach", "total"} <= add["phases"].keys()
    assert add["duration_s"] == add["phases"]["total"]
    [delete] = [x for x in calls if x["container_id"] == ns and x["command"] == "DEL"]
    assert delete["result"] == "ok" and "endpoint" in delete["phases"]
    [refused] = [x for x in calls if x["container_id"] == pods.made[-1] and x["command"] == "ADD"]
    assert (refused["level"], refused["result"], refused["code"]) == ("error", "error", failed.code)
    assert "nicAttach" in refused["error"]


def test_the_ipam_plugin_logs_to_its_own_file(lab, pods):
    vm = pods.vm
    ns = pods.netns()
    conf = cni.network_config()
    try:
        assert lab.cni(vm, "ADD", conf, plugin="vnetdp-ipam", container_id=ns, pod_netns=netns.path_of(ns)).ok
    finally:
        assert lab.cni(vm, "DEL", conf, plugin="vnetdp-ipam", container_id=ns, pod_netns=netns.path_of(ns)).ok
    commands = [x["command"] for x in log_lines(lab, vm, "vnetdp-ipam.log")
                if x.get("event") == "cni-call" and x["container_id"] == ns]
    assert commands == ["ADD", "DEL"]
