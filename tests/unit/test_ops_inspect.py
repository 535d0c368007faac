"""What `vnetdp status`, `endpoints` and `stats` gather (vnetdp.ops.inspect,
vnetdp.ops.stats) from fake maps and real stores in a temp state directory:
pods joined with their records and counters, pool usage, the agent check
over a real socket, the health verdict's rules, rates between samples."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading

import pytest

from vnetdp.agent import wire
from vnetdp.datapath import maps as M
from vnetdp.datapath.reasons import by_name
from vnetdp.ipam.sources import Pool
from vnetdp.ipam.store import Store
from vnetdp.network.records import PodRecord, PodRecords
from vnetdp.ops import inspect, stats

POD1, POD2, STRAY = "10.3.0.5", "10.3.0.6", "10.3.0.9"


def metric(ifindex, direction, reason, packets, octets) -> M.Metric:
    return M.Metric(ifindex, direction, by_name(reason).code, packets, octets)


class FakeMaps:
    def __init__(self, endpoints=None, metrics=(), node=None, quotas=None) -> None:
        self._endpoints = endpoints or {}
        self._metrics = list(metrics)
        self._node = node
        self._quotas = quotas or {}

    def endpoints(self):
        return {ipaddress.IPv4Address(a): ep for a, ep in self._endpoints.items()}

    def metrics(self):
        return self._metrics

    def node(self):
        return self._node

    def snat_quotas(self):
        return {ipaddress.IPv4Address(a): n for a, n in self._quotas.items()}


NODE = M.Node(2, "00:0d:3a:00:00:01", "12:34:56:78:9a:bc", ipaddress.IPv4Address("10.3.0.4"))
NAMES = {1: "lo", 2: "eth0", 7: "vndaaaaaaaaaaa", 8: "vndbbbbbbbbbbb", 9: "vndccccccccccc"}


@pytest.fixture
def node(tmp_path):
    """A state directory with two pod records, and maps with their endpoints,
    a stray endpoint, counters and SNAT flows."""
    records = PodRecords(str(tmp_path))
    records.save(PodRecord("c" * 64, "eth0", "/run/netns/p1", POD1, "vnetdp-ipam", k8s_namespace="default",
                           k8s_pod="web-0", network="vnetdp", host_mac="aa:aa:aa:aa:aa:01",
                           pod_mac="02:00:00:00:00:01"))
    records.save(PodRecord("podman-2", "eth0", "/run/netns/p2", POD2, "vnetdp-ipam", network="vnetdp"))
    m = FakeMaps(
        endpoints={POD1: M.Endpoint(7, "02:00:00:00:00:01", "aa:aa:aa:aa:aa:01"),
                   POD2: M.Endpoint(8, "02:00:00:00:00:02", "aa:aa:aa:aa:aa:02"),
                   STRAY: M.Endpoint(9, "02:00:00:00:00:09", "aa:aa:aa:aa:aa:09")},
        metrics=[metric(7, 1, "FWD_TO_POD", 1000, 98000), metric(7, 0, "FWD_VNET", 1000, 98000),
                 metric(7, 0, "DROP_SPOOF_IP", 5, 300), metric(7, 1, "DROP_MALFORMED", 2, 100),
                 metric(8, 0, "FWD_SNAT", 10, 600), metric(2, 2, "PASS_NIC", 50, 5000),
                 metric(42, 0, "FWD_LOCAL", 3, 180)],
        node=NODE, quotas={POD2: 4})
    return inspect.NodeDirs(str(tmp_path), str(tmp_path / "bpffs")), m


def test_endpoints_join_records_with_the_datapath_and_sum_counters(node):
    dirs, m = node
    rows = {r["address"]: r for r in inspect.endpoints(dirs, m, NAMES)}
    assert set(rows) == {POD1, POD2, STRAY}
    web = rows[POD1]
    assert (web["container_id"], web["namespace"], web["pod"], web["owner"], web["network"]) == \
        ("c" * 64, "default", "web-0", "cni", "vnetdp")
    assert (web["pod_mac"], web["host_veth"], web["host_ifindex"], web["in_datapath"]) == \
        ("02:00:00:00:00:01", "vndaaaaaaaaaaa", 7, True)
    assert (web["packets"], web["bytes"], web["drops"]) == (2000, 196000, 7)
    assert web["directions"]["to-pod"] == {"packets": 1000, "bytes": 98000, "drops": 2}
    assert web["directions"]["from-pod"] == {"packets": 1000, "bytes": 98000, "drops": 5}
    assert (rows[POD2]["packets"], rows[POD2]["snat_flows"], rows[POD2]["pod"]) == (10, 4, "")
    assert (rows[STRAY]["owner"], rows[STRAY]["container_id"], rows[STRAY]["host_veth"]) == ("", "", "vndccccccccccc")


def test_a_record_without_a_datapath_endpoint_still_shows(node):
    dirs, m = node
    del m._endpoints[POD2]
    row = next(r for r in inspect.endpoints(dirs, m, NAMES) if r["address"] == POD2)
    assert not row["in_datapath"] and row["packets"] == 0
    assert row["host_veth"].startswith("vnd") and row["pod_mac"] is None


def test_a_sample_groups_counters_by_endpoint(node, monkeypatch):
    dirs, m = node
    monkeypatch.setattr(inspect, "open_maps", lambda dirs: contextlib.nullcontext(m))
    s = stats.sample(dirs, NAMES)
    kinds = [(e["kind"], e["interface"]) for e in s["endpoints"]]
    assert kinds == [("pod", "vndbbbbbbbbbbb"), ("pod", "vndaaaaaaaaaaa"), ("nic", "eth0"), ("gone", "ifindex-42")]
    web = next(e for e in s["endpoints"] if e["interface"] == "vndaaaaaaaaaaa")
    assert (web["namespace"], web["pod"], web["address"], web["owner"]) == ("default", "web-0", POD1, "cni")
    assert {(c["direction"], c["reason"]): (c["packets"], c["bytes"], c["drop"]) for c in web["counters"]} == {
        ("to-pod", "FWD_TO_POD"): (1000, 98000, False), ("from-pod", "FWD_VNET"): (1000, 98000, False),
        ("from-pod", "DROP_SPOOF_IP"): (5, 300, True), ("to-pod", "DROP_MALFORMED"): (2, 100, True)}


def test_rates_between_samples_and_a_reset_counter():
    def sample(t, packets, octets):
        return {"time": t, "endpoints": [{"ifindex": 7, "interface": "vndaaaaaaaaaaa", "counters": [
            {"direction": "to-pod", "reason": "FWD_TO_POD", "drop": False, "packets": packets, "bytes": octets}]}]}

    rated = stats.rates(sample(10.0, 100, 1000), sample(12.0, 300, 5000))
    assert rated["interval_s"] == 2.0
    assert rated["endpoints"][0]["counters"][0] == {"direction": "to-pod", "reason": "FWD_TO_POD",
                                                    "drop": False, "packets": 300, "bytes": 5000,
                                                    "packets_per_s": 100.0, "bytes_per_s": 2000.0}
    reset = stats.rates(sample(10.0, 100, 1000), sample(11.0, 40, 400))["endpoints"][0]["counters"][0]
    assert (reset["packets_per_s"], reset["bytes_per_s"]) == (40.0, 400.0)


def test_watch_reports_count_times(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(stats, "sample", lambda dirs: {"time": float(next(clock)), "endpoints": []})
    reports = list(stats.watch(None, 1.0, count=3, sleep=lambda s: None))
    assert len(reports) == 3 and all(r["interval_s"] == 1.0 for r in reports)


def test_pools_size_used_free_per_subnet(tmp_path):
    store = Store(str(tmp_path))
    addresses = tuple(ipaddress.IPv4Address(f"10.3.0.{i}") for i in range(5, 10))
    with store.transaction() as state:
        state.refresh([Pool(ipaddress.IPv4Network("10.3.0.0/16"), ipaddress.IPv4Address("10.3.0.1"), addresses)],
                      1.0)
        state.allocate("c1", "eth0", 1.0)
        state.allocate("c2", "eth0", 1.0)
    assert inspect.pools(inspect.NodeDirs(str(tmp_path), "")) == [
        {"subnet": "10.3.0.0/16", "gateway": "10.3.0.1", "size": 5, "used": 2, "free": 3}]


def test_pools_of_a_missing_state_directory_are_an_error_and_create_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        inspect.pools(inspect.NodeDirs(str(tmp_path / "missing"), ""))
    assert not (tmp_path / "missing").exists()


# --- the agent ------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_agent(path: str, answer: bool = True):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    seen = []

    def serve():
        conn, _ = server.accept()
        with conn:
            if answer:
                request, _ = wire.recv_request(conn)
                seen.append(wire.decode_request(request))
                conn.sendall(wire.encode_reply(0, b'{"cniVersion": "1.1.0"}', b""))
            else:
                threading.Event().wait(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        thread.join(2)
        server.close()


def test_the_agent_is_alive_when_it_answers_version(tmp_path):
    dirs = inspect.NodeDirs(str(tmp_path), "")
    with fake_agent(os.path.join(tmp_path, "agent.sock")) as seen:
        found = inspect.agent(dirs)
    assert found["alive"] and found["socket"].endswith("agent.sock")
    assert seen[0][0] == "vnetdp" and seen[0][1] == {"CNI_COMMAND": "VERSION"}


def test_the_agent_is_down_without_a_socket_or_an_answer(tmp_path):
    dirs = inspect.NodeDirs(str(tmp_path), "")
    assert not inspect.agent(dirs)["alive"]
    with fake_agent(os.path.join(tmp_path, "agent.sock"), answer=False):
        found = inspect.agent(dirs, timeout=0.2)
    assert not found["alive"] and found["detail"]


# --- the verdict ----------------------------------------------------------------------------
HEALTHY = {
    "settings": {"nicAttach": "tc"},
    "programs": {"build": "abc", "builds": ["abc"], "this_code": "abc", "programs": {"from_nic": 45}},
    "nic": {"name": "eth0", "ifindex": 2, "attachments": [{"hook": "ingress", "mechanism": "tcx", "prog_id": 45,
                                                           "program": "from_nic"}]},
    "pods": {"host_veths": 2, "attached": 2, "missing": []},
    "agent": {"socket": "/x/agent.sock", "alive": True, "detail": ""},
    "pools": [{"subnet": "10.3.0.0/16", "gateway": "10.3.0.1", "size": 10, "used": 2, "free": 8}],
    "snat": {"entries": 10, "capacity": 131072, "fill": 0.0001},
}


@pytest.fixture
def verdict(tmp_path, monkeypatch):
    """status() over sections replaced by ``parts`` (HEALTHY unless changed)."""
    maps = FakeMaps(endpoints={POD1: M.Endpoint(7, "02:00:00:00:00:01", "aa:aa:aa:aa:aa:01")}, node=NODE)

    def run(**parts):
        got = {**HEALTHY, **parts}
        for name in ("settings", "programs", "pools", "snat", "agent"):
            value = got[name]
            monkeypatch.setattr(inspect, name, lambda *a, v=value, **k: _value(v))
        monkeypatch.setattr(inspect, "nic", lambda *a: _value(got["nic"]))
        monkeypatch.setattr(inspect, "pod_attachments", lambda *a: _value(got["pods"]))
        monkeypatch.setattr(inspect, "link_names", lambda: NAMES)
        monkeypatch.setattr(inspect, "open_maps", lambda dirs: contextlib.nullcontext(maps))
        return inspect.status(inspect.NodeDirs(str(tmp_path), str(tmp_path / "bpffs")))

    return run


def _value(v):
    if isinstance(v, Exception):
        raise v
    return {**v} if isinstance(v, dict) else v


def test_a_node_with_everything_in_place_is_healthy(verdict):
    s = verdict()
    assert s["verdict"] == "healthy" and s["healthy"] and not s["problems"] and not s["warnings"]
    assert s["pods"]["endpoints"] == 1 and s["pods"]["records"] == 0


@pytest.mark.parametrize("parts,says", [
    ({"programs": {**HEALTHY["programs"], "build": None}}, "programs are not pinned"),
    ({"nic": {**HEALTHY["nic"], "attachments": []}}, "NIC program missing"),
    ({"nic": {"name": None, "ifindex": None, "attachments": []}}, "no node configuration"),
    ({"pools": [{**HEALTHY["pools"][0], "used": 10, "free": 0}]}, "IPAM pool empty"),
    ({"snat": {"entries": 125000, "capacity": 131072, "fill": 0.9537}}, "SNAT table 95% full"),
    ({"pods": {"host_veths": 2, "attached": 1, "missing": [{"host_veth": "vndx", "missing": ["egress"]}]}},
     "lack pod programs: vndx (egress)"),
    ({"pools": OSError("cannot lock IPAM state")}, "IPAM: cannot lock"),
    ({"settings": ValueError("node.json is not JSON")}, "node settings: node.json"),
], ids=["programs", "nic-program", "nic-unconfigured-with-pods", "pool-empty", "snat-full", "veth-programs",
        "ipam-error", "settings-error"])
def test_what_makes_a_node_unhealthy(verdict, parts, says):
    s = verdict(**parts)
    assert not s["healthy"] and s["verdict"].startswith("unhealthy: ") and says in s["verdict"], s["verdict"]


@pytest.mark.parametrize("parts,says", [
    ({"agent": {"socket": "/x/agent.sock", "alive": False, "detail": "refused"}}, "agent down"),
    ({"pools": []}, "no IPAM pools yet"),
    ({"programs": {**HEALTHY["programs"], "this_code": "def"}}, "sources here are build def"),
], ids=["agent", "no-pools", "other-build"])
def test_what_is_only_a_warning(verdict, parts, says):
    s = verdict(**parts)
    assert s["healthy"] and s["verdict"] == "healthy" and any(says in w for w in s["warnings"]), s["warnings"]


def test_a_record_without_its_endpoint_is_a_problem(verdict, tmp_path):
    PodRecords(str(tmp_path)).save(PodRecord("lost", "eth0", "/run/netns/x", "10.3.0.77", "vnetdp-ipam"))
    s = verdict()
    assert "record but no datapath endpoint: lost" in s["verdict"]


def test_the_owner_of_a_pod_record_is_docker_for_docker_networks_else_cni():
    from vnetdp.network.records import PodRecord
    from vnetdp.ops.inspect import owner_of
    record = PodRecord("c", "eth0", "/run/netns/c", "10.3.1.1", "vnetdp-ipam", network="vnetdp")
    assert owner_of(record) == "cni"
    assert owner_of(PodRecord("e", "eth0", "", "10.3.1.2", "vnetdp-docker", network="docker:4f2a")) == "docker"
