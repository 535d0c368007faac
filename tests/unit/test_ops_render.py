"""Human tables of `vnetdp status`, `endpoints` and `stats` (vnetdp.ops.render),
and the commands themselves on a node with nothing pinned (vnetdp.cli):
JSON or tables, the exit codes, the refusals."""
from __future__ import annotations

import json

import pytest

from vnetdp import cli
from vnetdp.ops import render

STATUS = {
    "state_dir": "/var/lib/vnetdp", "bpffs_dir": "/sys/fs/bpf/vnetdp", "verdict": "healthy", "healthy": True,
    "problems": [], "warnings": ["agent down (refused): CNI calls run in-process, slower"],
    "settings": {"nicAttach": "tc", "snatPorts": [61000, 65535]},
    "programs": {"build": "abc123", "builds": ["abc123"], "this_code": "abc123", "programs": {}},
    "nic": {"name": "eth0", "ifindex": 2, "attachments": [{"hook": "ingress", "mechanism": "tcx", "prog_id": 45,
                                                           "program": "from_nic"}]},
    "pods": {"host_veths": 3, "attached": 3, "missing": [], "endpoints": 3},
    "agent": {"socket": "/var/lib/vnetdp/agent.sock", "alive": False, "detail": "refused"},
    "pools": [{"subnet": "10.3.0.0/16", "gateway": "10.3.0.1", "size": 10, "used": 3, "free": 7}],
    "snat": {"entries": 40, "capacity": 131072, "fill": 0.0003},
}


def test_columns_line_up_and_numbers_are_right_aligned():
    text = render.table(["NAME", "PACKETS"], [["a", 5], ["longer", 12345], ["c", None]])
    assert text.splitlines() == ["NAME    PACKETS", "a             5", "longer    12345", "c             -"]


def test_status_shows_the_verdict_first_then_each_part():
    text = render.status(STATUS)
    lines = text.splitlines()
    assert lines[0] == "node:      healthy"
    assert lines[1] == "  warning: agent down (refused): CNI calls run in-process, slower"
    assert "programs:  build abc123" in text and "agent:     down (/var/lib/vnetdp/agent.sock)" in text
    assert any(line.split() == ["NIC", "eth0", "ingress", "tcx", "45", "from_nic"] for line in lines)
    assert any(line.split()[:3] == ["pods", "ingress+egress", "3"] for line in lines)
    assert any(line.split() == ["10.3.0.0/16", "10", "3", "7"] for line in lines)
    assert "SNAT table: 40 of 131072 entries (0.0%)" in text
    assert any(line.split() == ["snatPorts", "[61000,", "65535]"] for line in lines)


def test_status_of_a_broken_node_names_each_problem_and_failed_part():
    broken = {**STATUS, "healthy": False, "verdict": "unhealthy: IPAM pool empty; NIC program missing",
              "problems": ["IPAM pool empty", "NIC program missing"], "warnings": [],
              "pools": {"error": "cannot lock"}, "snat": {"error": "no maps pinned"},
              "nic": {"name": None, "ifindex": None, "attachments": []}}
    text = render.status(broken)
    assert text.splitlines()[:3] == ["node:      unhealthy: IPAM pool empty; NIC program missing",
                                     "  problem: IPAM pool empty", "  problem: NIC program missing"]
    assert "  error: cannot lock" in text and "SNAT table: error: no maps pinned" in text
    assert "not configured yet" in text


def test_endpoints_one_line_per_pod():
    rows = [{"container_id": "c" * 64, "namespace": "default", "pod": "web-0", "owner": "cni",
             "address": "10.3.0.5", "pod_mac": "02:00:00:00:00:01", "host_veth": "vndaaaaaaaaaaa",
             "in_datapath": True, "packets": 2000, "bytes": 196000, "drops": 7},
            {"container_id": "", "namespace": "", "pod": "", "owner": "", "address": "10.3.0.9",
             "pod_mac": None, "host_veth": "vndbbbbbbbbbbb", "in_datapath": False, "packets": 0, "bytes": 0,
             "drops": 0}]
    lines = render.endpoints(rows).splitlines()
    assert lines[0].split() == ["CONTAINER", "POD", "OWNER", "ADDRESS", "POD", "MAC", "HOST", "VETH", "PACKETS",
                                "BYTES", "DROPS"]
    assert lines[1].split() == ["c" * 12, "default/web-0", "cni", "10.3.0.5", "02:00:00:00:00:01",
                                "vndaaaaaaaaaaa", "2000", "196000", "7"]
    assert "vndbbbbbbbbbbb (not in datapath)" in lines[2]


def test_stats_with_and_without_rates():
    sample = {"time": 0.0, "endpoints": [{"kind": "pod", "interface": "vndaaaaaaaaaaa", "ifindex": 7,
                                          "container_id": "c1", "namespace": "default", "pod": "web-0",
                                          "address": "10.3.0.5", "owner": "cni", "counters": [
                                              {"direction": "to-pod", "reason": "FWD_TO_POD", "drop": False,
                                               "packets": 1000, "bytes": 98000}]}]}
    plain = render.stats(sample).splitlines()
    assert plain[1].split() == ["INTERFACE", "POD", "DIRECTION", "REASON", "PACKETS", "BYTES"]
    assert plain[2].split() == ["vndaaaaaaaaaaa", "default/web-0", "to-pod", "FWD_TO_POD", "1000", "98000"]
    rated = {**sample, "interval_s": 2.0, "endpoints": [{**sample["endpoints"][0], "counters": [
        {**sample["endpoints"][0]["counters"][0], "packets_per_s": 500.0, "bytes_per_s": 49000.0}]}]}
    lines = render.stats(rated).splitlines()
    assert lines[0].endswith("(rates over 2.0 s)") and lines[1].split()[-2:] == ["PKTS/S", "BYTES/S"]
    assert lines[2].split()[-2:] == ["500.0", "49000.0"]


# --- the commands, on a node with nothing pinned ----------------------------------------------
def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_of_a_node_without_pins_is_unhealthy_exit_2(tmp_path, capsys):
    rc, out, _ = run(capsys, "status", "--state-dir", str(tmp_path), "--bpffs-dir", str(tmp_path / "bpffs"),
                     "--json")
    found = json.loads(out)
    assert rc == 2 and not found["healthy"] and "not pinned" in found["verdict"]
    assert found["netns"] is None and found["agent"]["alive"] is False
    rc, out, _ = run(capsys, "status", "--state-dir", str(tmp_path), "--bpffs-dir", str(tmp_path / "bpffs"))
    assert rc == 2 and out.startswith("node:      unhealthy: ")


@pytest.mark.parametrize("command", ["endpoints", "stats"])
def test_endpoints_and_stats_without_pins_say_so(tmp_path, capsys, command):
    rc, out, err = run(capsys, command, "--state-dir", str(tmp_path), "--bpffs-dir", str(tmp_path / "bpffs"))
    assert rc == 1 and out == "" and "no maps pinned" in err


def test_metrics_once_prints_the_exposition_even_without_pins(tmp_path, capsys):
    rc, out, _ = run(capsys, "metrics", "--once", "--state-dir", str(tmp_path),
                     "--bpffs-dir", str(tmp_path / "bpffs"))
    assert rc == 0 and 'vnetdp_metrics_source_up{source="datapath"} 0.0' in out
    assert "# TYPE vnetdp_cni_call_duration_seconds histogram" in out


def test_metrics_refuses_a_remote_address(tmp_path, capsys):
    rc, _, err = run(capsys, "metrics", "--listen", "0.0.0.0:9464", "--state-dir", str(tmp_path))
    assert rc == 1 and "--allow-remote" in err


def test_count_needs_watch(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stats", "--count", "2"])
    assert "--count needs --watch" in capsys.readouterr().err
