"""Docker in the lab without a daemon: dockerd's wrapper script, the busybox
image, ping summaries from a container's busybox, the demo's rows for a
container (same format as the pods', no TCP column) and its check of who owns
which address in the IPAM store, as ``vnetdp ipam show`` prints it."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import REPO
from vnetdp.ipam.store import CNI, DOCKER, Allocation, Store
from vnetdp.lab import demo, docker_demo
from vnetdp.lab import docker as dk
from vnetdp.lab import plan as P
from vnetdp.lab.probe import ProbeResult, ping_result

IPUTILS = """PING 10.3.0.100 (10.3.0.100) 56(84) bytes of data.

--- 10.3.0.100 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 405ms
rtt min/avg/max/mdev = 0.052/0.071/0.094/0.017 ms
"""
BUSYBOX = """PING 10.3.0.100 (10.3.0.100): 56 data bytes
64 bytes from 10.3.0.100: seq=0 ttl=64 time=0.105 ms

--- 10.3.0.100 ping statistics ---
3 packets transmitted, 3 packets received, 0% packet loss
round-trip min/avg/max = 0.051/0.072/0.105 ms
"""


def finished(stdout: str, code: int = 0) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["ping"], code, stdout, "")


@pytest.mark.parametrize("out,ms", [(IPUTILS, 0.071), (BUSYBOX, 0.072)])
def test_ping_summaries_of_iputils_and_busybox(out, ms):
    assert ping_result(finished(out), 3) == ProbeResult(True, ms, out.strip().splitlines()[-1])
    assert not ping_result(finished(out), 4).ok                 # a reply short
    assert not ping_result(finished(out, code=1), 3).ok


def test_a_lost_reply_is_a_failed_ping():
    lost = BUSYBOX.replace("3 packets received, 0%", "2 packets received, 33%")
    assert not ping_result(finished(lost, code=1), 3).ok and not ping_result(finished(lost), 3).ok


def node(tmp_path: Path, **kw) -> dk.DockerNode:
    lab = SimpleNamespace(plan=P.Plan("t"))
    return dk.DockerNode(lab, lab.plan.vm(1), tmp_path, "abc123", **kw)


def test_dockerds_wrapper_keeps_the_lab_and_nothing_of_the_hosts_docker(tmp_path):
    lines = node(tmp_path).wrapper().splitlines()
    assert lines[0] == "set -eu"
    private_run = lines.index("mount -t tmpfs -o mode=755 tmpfs /run")
    assert lines.index(f"mount --rbind {P.LAB_ROOT} {tmp_path}/keep") < private_run \
        < lines.index(f"mount --move {tmp_path}/keep {P.LAB_ROOT}")
    assert f"mount --bind {tmp_path}/etc-docker /etc/docker" in lines
    argv = lines[-1].split()
    assert argv[:2] == ["exec", dk.DOCKERD] and argv[argv.index("-H") + 1] == f"unix://{tmp_path}/docker.sock"
    for flag in ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                 "--userland-proxy=false"):
        assert flag in argv
    assert argv[argv.index("--data-root") + 1] == f"{tmp_path}/docker"
    assert argv[argv.index("--cgroup-parent") + 1] == "vnd-docker-abc123"


def test_dockerds_command_line_is_the_wrappers_and_live_restore_is_a_switch(tmp_path):
    n = node(tmp_path)
    assert n.wrapper().splitlines()[-1] == "exec " + " ".join(n.dockerd_argv())
    assert "--live-restore" not in n.dockerd_argv()
    n.live_restore = True
    assert n.dockerd_argv()[-1] == "--live-restore" and n.wrapper().endswith(" --live-restore\n")


def test_a_restart_without_the_plugin_is_refused_before_anything_is_stopped(tmp_path):
    with pytest.raises(RuntimeError, match="needs the plugin running"):
        node(tmp_path).restart()


@pytest.mark.skipif(not os.path.exists(dk.BUSYBOX), reason="no static busybox")
def test_the_image_is_busybox_and_its_applets(tmp_path):
    with tarfile.open(dk.busybox_image(tmp_path)) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile()
    assert {a: members[f"bin/{a}"].linkname for a in dk.APPLETS} == {a: "busybox" for a in dk.APPLETS}


def test_missing_tools_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(dk, "BUSYBOX", str(tmp_path / "busybox"))
    monkeypatch.setattr(dk, "DOCKERD", str(tmp_path / "dockerd"))
    missing = dk.missing_tools()
    assert "dockerd (apt: docker.io)" in missing and "a static busybox (apt: busybox-static)" in missing
    with pytest.raises(RuntimeError, match="busybox-static"):
        docker_demo.check_host()


def test_the_stop_of_a_node_that_never_started_removes_its_directory(tmp_path):
    tmp = tmp_path / "node"
    tmp.mkdir()
    n = node(tmp)
    assert dk.teardown([n]) == [] and not tmp.exists()


# --- the demo's rows -------------------------------------------------------------------
def test_a_containers_row_has_the_pods_format_and_no_tcp(monkeypatch):
    readings = iter([collections.Counter(FWD_VNET=10), collections.Counter(FWD_VNET=16, FWD_TO_POD=3)])
    monkeypatch.setattr(demo, "counters", lambda lab, vm: next(readings))
    monkeypatch.setattr(demo.fabric, "drops", lambda plan: {"vm1_bad_ip": 0})
    lab = SimpleNamespace(plan=P.Plan())
    row, works = demo.measure(lab, "docker-peer VM", "vnd-vm1:demo", "10.3.0.100", lab.plan.vm(1),
                              lambda: ProbeResult(True, 0.142), None)
    assert works
    assert row == f"{'docker-peer VM':<20} {'vnd-vm1:demo -> 10.3.0.100':<40} {'0.142':>8} {'-':>10}  " \
                  "FWD_TO_POD+3, FWD_VNET+6"
    header = demo.HEADER
    assert row.index("0.142") + len("0.142") == header.index("ping ms") + len("ping ms")

    readings = iter([collections.Counter(), collections.Counter()])
    row, works = demo.measure(lab, "docker-internet", "vnd-vm1:demo", "198.18.0.1", lab.plan.vm(1),
                              lambda: ProbeResult(False, None), None)
    assert not works and " FAIL " in row


def test_a_pods_row_still_needs_its_tcp_transfer(monkeypatch):
    monkeypatch.setattr(demo, "counters", lambda lab, vm: collections.Counter())
    monkeypatch.setattr(demo.fabric, "drops", lambda plan: {})
    lab = SimpleNamespace(plan=P.Plan())
    ok = lambda: ProbeResult(True, 0.05)  # noqa: E731
    _, works = demo.measure(lab, "p", "a", "b", lab.plan.vm(1), ok, lambda: ProbeResult(False, None))
    assert not works
    row, works = demo.measure(lab, "p", "a", "b", lab.plan.vm(1), ok, lambda: ProbeResult(True, 14.4))
    assert works and "14.40" in row


def test_the_containers_paths(tmp_path):
    addresses = {(1, 1): "10.3.1.1", (2, 1): "10.3.2.1"}
    lab = SimpleNamespace(plan=P.Plan(), pod_address=lambda vm, j: addresses[vm.k, j])
    assert docker_demo.container_paths(lab) == [("docker-pod same VM", "10.3.1.1"),
                                                ("docker-pod other VM", "10.3.2.1"),
                                                ("docker-peer VM", "10.3.0.100"),
                                                ("docker-internet", "198.18.0.1")]


# --- ownership, as `vnetdp ipam show` prints it --------------------------------------------
ENDPOINT = "e" * 64
NETWORK_ID = "n" * 64


class FakeNode:
    def __init__(self, vm, address: str) -> None:
        self.vm, self._address = vm, address

    def address(self, name):
        return self._address

    def endpoint_id(self, name):
        return ENDPOINT

    def network_id(self, name=dk.NETWORK):
        return NETWORK_ID


def store_lab(tmp_path: Path, held: list[tuple[str, str, str, str]]):
    """A lab whose VM 1 state directory is ``tmp_path``, its store holding
    ``held``: (address, owner, container ID, network)."""
    plan = P.Plan("t", pool=10)
    lab = SimpleNamespace(plan=SimpleNamespace(pool=plan.pool, pod_ns=plan.pod_ns, state_dir=lambda vm: str(tmp_path)),
                          pod_address=lambda vm, j: f"10.3.1.{j}")
    with Store(str(tmp_path)).transaction() as state:
        state.allocations += [Allocation(cid, "eth0", a, "10.3.0.0/16", "10.3.0.1", 1.0, net, owner)
                              for a, owner, cid, net in held]
    return lab, plan.vm(1)


def test_ownership_is_docker_for_the_container_and_cni_for_the_pods(tmp_path):
    lab, vm1 = store_lab(tmp_path, [("10.3.1.1", CNI, "vndt-vm1-pod1", "vnetdp"),
                                    ("10.3.1.2", CNI, "vndt-vm1-pod2", "vnetdp"),
                                    ("10.3.1.3", DOCKER, ENDPOINT, f"docker:{NETWORK_ID}")])
    lines = []
    assert docker_demo.ownership(lab, FakeNode(vm1, "10.3.1.3"), lines.append)
    assert lines[0] == f"\ncontainer demo on vm1: 10.3.1.3 (network vndnet, endpoint {ENDPOINT[:12]})"
    assert lines[1] == f"vnetdp ipam show --state-dir {tmp_path}:"
    assert lines[2].split() == ["10.3.1.1", "cni", "vndt-vm1-pod1", "vnetdp"]
    assert lines[4].split() == ["10.3.1.3", "docker", ENDPOINT[:24], f"docker:{NETWORK_ID}"]
    assert lines[-1].startswith("ownership: ok")


@pytest.mark.parametrize("held,address,wrong", [
    ([("10.3.1.3", CNI, ENDPOINT, "vnetdp")], "10.3.1.3", "10.3.1.3 is held by cni"),
    ([("10.3.1.3", DOCKER, ENDPOINT, "docker:other")], "10.3.1.3", "(docker:other), not docker"),
    ([("10.3.1.1", DOCKER, ENDPOINT, f"docker:{NETWORK_ID}")], "10.3.1.1", "10.3.1.1 is held by docker"),
    ([("10.3.2.3", DOCKER, ENDPOINT, f"docker:{NETWORK_ID}")], "10.3.2.3", "not a secondary address of vm1"),
    ([], "10.3.1.3", "10.3.1.3 is not in the store"),
])
def test_ownership_says_what_is_wrong(tmp_path, held, address, wrong):
    pods = [("10.3.1.1", CNI, "vndt-vm1-pod1", "vnetdp"), ("10.3.1.2", CNI, "vndt-vm1-pod2", "vnetdp")]
    lab, vm1 = store_lab(tmp_path, [p for p in pods if p[0] not in {h[0] for h in held}] + held)
    lines = []
    assert not docker_demo.ownership(lab, FakeNode(vm1, address), lines.append)
    assert lines[-1].startswith("ownership: ") and wrong in lines[-1], lines[-1]


def test_a_demo_without_docker_never_loads_it():
    code = ("import sys, vnetdp.lab.demo, vnetdp.lab.cli; "
            "print(sorted(m for m in sys.modules if m in ('vnetdp.lab.docker', 'vnetdp.lab.docker_demo')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
