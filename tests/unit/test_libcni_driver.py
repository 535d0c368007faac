"""The libcni driver of the end-to-end tests (tests/e2e/libcni), without a lab:
built offline as the e2e fixture builds it, then run against fake plugins
(shell scripts that log each call and answer from a file) in this process's
own namespace. ``--netns /proc/self/ns/net`` is only passed through: the fakes
touch no network, so this proves argument handling, what libcni hands each
plugin in a chain, its result cache, and the JSON on stdout."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import stat
import subprocess

import pytest

from helpers import REPO

_spec = importlib.util.spec_from_file_location("libcni_build", REPO / "tests/e2e/libcni/build.py")
libcni_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(libcni_build)

NETNS = "/proc/self/ns/net"
CAP_ARGS = {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"

# Logs each call (command and name in ``calls``; stdin and environment as
# <n>.stdin, <n>.env), answers ADD with reply.json, exits with ``status`` (0).
FAKE_PLUGIN = """#!/bin/sh
log={log}
conf=$(cat)
echo "$CNI_COMMAND $(basename "$0")" >> "$log/calls"
n=$(wc -l < "$log/calls")
printf '%s' "$conf" > "$log/$n.stdin"
env > "$log/$n.env"
if [ "$CNI_COMMAND" = ADD ] || [ -s "$log/status" ]; then cat "$log/reply.json"; fi
exit $(cat "$log/status" 2>/dev/null || echo 0)
"""


@pytest.fixture(scope="session")
def driver(tmp_path_factory) -> str:
    try:
        return libcni_build.build(tmp_path_factory.mktemp("cnidriver"))
    except libcni_build.DriverUnavailable as e:
        pytest.fail(str(e), pytrace=False)


class Fakes:
    """Fake plugins ``fake-iface`` and ``fake-chained`` in a bin directory, and what they logged."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.bin, self.log, self.cache = tmp / "bin", tmp / "log", tmp / "cache"
        for d in (self.bin, self.log):
            d.mkdir()
        for name in ("fake-iface", "fake-chained"):
            path = self.bin / name
            path.write_text(FAKE_PLUGIN.format(log=self.log))
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def reply(self, doc: dict, status: int = 0) -> None:
        (self.log / "reply.json").write_text(json.dumps(doc))
        if status:
            (self.log / "status").write_text(str(status))

    def calls(self) -> list[tuple[str, str, dict, dict]]:
        """(command, plugin, stdin, CNI_* environment) of every call so far."""
        lines = (self.log / "calls").read_text().splitlines() if (self.log / "calls").exists() else []
        out = []
        for n, line in enumerate(lines, 1):
            command, name = line.split()
            env = dict(kv.split("=", 1) for kv in (self.log / f"{n}.env").read_text().splitlines() if "=" in kv)
            stdin = json.loads((self.log / f"{n}.stdin").read_text())
            out.append((command, name, stdin, {k: v for k, v in env.items() if k.startswith("CNI_")}))
        return out

    def cache_file(self, network: str, container_id: str, ifname: str = "eth0") -> pathlib.Path:
        return self.cache / "results" / f"{network}-{container_id}-{ifname}"


@pytest.fixture
def fakes(tmp_path) -> Fakes:
    return Fakes(tmp_path)


def result(version: str, netns: str = NETNS) -> dict:
    ip = {"address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1}
    if version.startswith("0."):
        ip["version"] = "4"
    return {"cniVersion": version,
            "interfaces": [{"name": "vethfake", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns}],
            "ips": [ip], "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], "dns": {}}


def conflist(path: pathlib.Path, version: str, name: str = "fakenet") -> str:
    path.write_text(json.dumps({
        "cniVersion": version, "name": name,
        "plugins": [{"type": "fake-iface", "ipam": {"type": "none"}},
                    {"type": "fake-chained", "capabilities": {"portMappings": True}, "snat": True}]}))
    return str(path)


def drive(driver: str, *argv: str) -> subprocess.CompletedProcess:
    """The driver in a clean environment, as a runtime's would be."""
    return subprocess.run([driver, *argv], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def call_args(fakes: Fakes, conf: str, container_id: str = "c1", netns: str = NETNS) -> list[str]:
    empty = fakes.bin.parent / "empty-bin"
    empty.mkdir(exist_ok=True)
    return ["--conflist", conf, "--netns", netns, "--container-id", container_id, "--ifname", "eth0",
            "--bin-dir", f"{empty},{fakes.bin}", "--cache-dir", str(fakes.cache),
            "--cap-args", json.dumps(CAP_ARGS), "--args", POD_ARGS]


def test_help_names_the_commands_and_every_flag(driver):
    proc = drive(driver, "--help")
    assert proc.returncode == 0
    assert "add|check|del" in proc.stdout
    for flag in ("conflist", "netns", "container-id", "ifname", "bin-dir", "cache-dir", "cap-args", "args"):
        assert f"-{flag} " in proc.stdout, flag


@pytest.mark.parametrize("argv,says", [
    ([], "usage"),
    (["up"], "unknown command"),
    (["add", "--conflist", "x.conflist"], "missing --container-id, --bin-dir, --netns"),
    (["check", "--conflist", "x", "--container-id", "c", "--bin-dir", "/nonexistent"], "missing --netns"),
    (["add", "--no-such-flag"], "no-such-flag"),
    (["del", "--conflist", "x", "--container-id", "c", "--bin-dir", "/b", "extra"], "unexpected arguments"),
], ids=["nothing", "unknown-command", "missing-flags", "check-needs-netns", "unknown-flag", "stray-argument"])
def test_bad_usage_exits_2_and_says_why(driver, argv, says):
    proc = drive(driver, *argv)
    assert proc.returncode == 2
    assert says in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_check_del_run_the_chain_as_a_runtime_does(driver, fakes, tmp_path, version):
    conf = conflist(tmp_path / "net.conflist", version)
    fakes.reply(result(version))

    added = drive(driver, "add", *call_args(fakes, conf))
    assert added.returncode == 0, added.stderr
    out = json.loads(added.stdout)
    assert out["cniVersion"] == version and out["ips"][0]["address"] == "10.9.0.2/32"
    assert out["interfaces"][1]["sandbox"] == NETNS
    (c1, p1, in1, env1), (c2, p2, in2, env2) = fakes.calls()
    assert (c1, p1, c2, p2) == ("ADD", "fake-iface", "ADD", "fake-chained")
    expected_env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
                    "CNI_ARGS": POD_ARGS, "CNI_PATH": f"{fakes.bin.parent / 'empty-bin'}:{fakes.bin}"}
    assert env1 == env2 == expected_env
    # libcni names each plugin's config after the list, gives the capability
    # arguments only to the plugin that declares the capability, and chains results
    assert in1["name"] == in2["name"] == "fakenet" and in1["cniVersion"] == in2["cniVersion"] == version
    assert "runtimeConfig" not in in1 and "prevResult" not in in1
    assert in2["runtimeConfig"] == CAP_ARGS and in2["snat"] is True
    assert in2["prevResult"]["ips"][0]["address"] == "10.9.0.2/32"
    cached = json.loads(fakes.cache_file("fakenet", "c1").read_text())
    assert cached["result"]["ips"][0]["address"] == "10.9.0.2/32" and cached["capabilityArgs"] == CAP_ARGS

    checked = drive(driver, "check", *call_args(fakes, conf))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ""
    checks = fakes.calls()[2:]
    assert [(c, p) for c, p, _, _ in checks] == [("CHECK", "fake-iface"), ("CHECK", "fake-chained")]
    assert all(stdin["prevResult"]["ips"][0]["address"] == "10.9.0.2/32" for _, _, stdin, _ in checks)

    deleted = drive(driver, "del", *call_args(fakes, conf))
    assert deleted.returncode == 0, deleted.stderr
    dels = fakes.calls()[4:]
    assert [(c, p) for c, p, _, _ in dels] == [("DEL", "fake-chained"), ("DEL", "fake-iface")]  # reverse order
    assert all("prevResult" in stdin for _, _, stdin, _ in dels)
    assert dels[0][2]["runtimeConfig"] == CAP_ARGS
    assert not fakes.cache_file("fakenet", "c1").exists()

    again = drive(driver, "del", *call_args(fakes, conf))  # no cached result left: DEL still runs
    assert again.returncode == 0, again.stderr
    assert all("prevResult" not in stdin for _, _, stdin, _ in fakes.calls()[6:])


def test_del_without_a_netns(driver, fakes, tmp_path):
    conf = conflist(tmp_path / "net.conflist", "1.0.0")
    argv = call_args(fakes, conf, netns="")
    proc = drive(driver, "del", *argv)
    assert proc.returncode == 0, proc.stderr
    assert {env["CNI_NETNS"] for _, _, _, env in fakes.calls()} == {""}


def test_a_single_network_configuration_file(driver, fakes, tmp_path):
    path = tmp_path / "net.conf"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "single", "type": "fake-iface"}))
    fakes.reply(result("1.0.0"))
    proc = drive(driver, "add", *call_args(fakes, str(path), container_id="c2"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.9.0.2/32"
    assert [(c, p) for c, p, _, _ in fakes.calls()] == [("ADD", "fake-iface")]
    assert fakes.cache_file("single", "c2").exists()


def test_a_plugin_error_goes_to_stderr_with_its_code(driver, fakes, tmp_path):
    conf = conflist(tmp_path / "net.conflist", "1.0.0")
    fakes.reply({"cniVersion": "1.0.0", "code": 7, "msg": "invalid field value", "details": "mtu"}, status=1)
    proc = drive(driver, "add", *call_args(fakes, conf))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "fake-iface" in proc.stderr and "invalid field value" in proc.stderr
    assert "CNI error code 7" in proc.stderr
    assert [p for _, p, _, _ in fakes.calls()] == ["fake-iface"]  # the chain stops at the failure
    assert not fakes.cache_file("fakenet", "c1").exists()


def test_a_plugin_missing_from_every_bin_dir(driver, fakes, tmp_path):
    path = tmp_path / "net.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n",
                                "plugins": [{"type": "no-such-plugin"}]}))
    proc = drive(driver, "add", *call_args(fakes, str(path)))
    assert proc.returncode == 1 and "no-such-plugin" in proc.stderr


def test_bad_capability_arguments(driver, fakes, tmp_path):
    conf = conflist(tmp_path / "net.conflist", "1.0.0")
    argv = call_args(fakes, conf)
    argv[argv.index("--cap-args") + 1] = "[1, 2]"
    proc = drive(driver, "add", *argv)
    assert proc.returncode == 1 and "--cap-args" in proc.stderr
    assert fakes.calls() == []


def test_libcni_1_1_refuses_a_cni_1_1_0_result(driver, fakes, tmp_path):
    """Why the lab's conflists say 1.0.0: the libcni of containerd 1.6/1.7 (and
    Debian's 1.1.2) cannot parse a 1.1.0 result, so a 1.1.0 network fails ADD."""
    conf = conflist(tmp_path / "net.conflist", "1.1.0")
    fakes.reply(result("1.1.0"))
    proc = drive(driver, "add", *call_args(fakes, conf))
    assert proc.returncode == 1
    assert 'unsupported CNI result version "1.1.0"' in proc.stderr
    assert [p for _, p, _, _ in fakes.calls()] == ["fake-iface"]


def test_the_build_uses_no_network_and_no_module_proxy():
    env = libcni_build.GO_ENV
    assert env["GO111MODULE"] == "off" and env["GOPROXY"] == "off" and env["GOPATH"] == "/usr/share/gocode"
    assert os.path.isfile(libcni_build.DRIVER_DIR / "main.go")
