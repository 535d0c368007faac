"""The compiled CNI entry point (cni/vnetdp.c) against the agent's framing
(vnetdp/agent/wire.py), in both its builds: the entry point ``vnetdp install``
compiles (an agent's reply relayed, else the Python entry point exec'd to run
the call in-process) and the node image's host client (retries, then code 11);
and the steps that install them (``vnetdp install``, vnetdp-node-init and its
wrappers).

The C file is the framing written a second time: these tests hold the two
together. A fake agent serves the socket with wire's own functions; no
namespaces are made (a netns to hand over is /proc/self/ns/net or any file).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

from helpers import REPO
from vnetdp import defaults, install
from vnetdp.agent import wire
from vnetdp.cni import invoke
from vnetdp.cni.spec import CniError, Code

SOURCE = REPO / "cni" / "vnetdp.c"
NODE_INIT = REPO / "deploy" / "kubernetes" / "vnetdp-node-init"
ADD = {"cniVersion": "1.0.0", "name": "n", "type": "vnetdp", "ipam": {"type": "vnetdp-ipam"}}
# A fake Python for the entry build: records how it was exec'd, answers like a plugin.
RECORDER = """#!/bin/sh
out="$(dirname "$0")/exec.$$"
{ printf '%s\\n' "$@"; printf -- '--env\\n'; env; printf -- '--stdin\\n'; cat; } > "$out.tmp"
mv "$out.tmp" "$out"
echo '{"in-process": true}'
exit 3
"""
DEFAULTS = {"VNETDP_IPAM_URL": "http://127.0.0.1:1/doc?a=b&c='d' \"e\"\\", "VNETDP_BPFFS_DIR": "/sys/fs/bpf/x"}


def compiler() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (gcc)")
    return cc


def build(out: Path, *cflags: str) -> str:
    # As the Containerfile and vnetdp install build it (less -static: libc.a may be missing here).
    subprocess.run([compiler(), "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SOURCE), *cflags],
                   check=True)
    return str(out)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> str:
    """The node image's host client."""
    return build(tmp_path_factory.mktemp("client") / "vnetdp-cni-client")


class Entry:
    """The entry build, with RECORDER standing for Python: ``exec_record()``
    is (argv, env, stdin) of its one exec since ``clear()``."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.python = d / "python"
        self.python.write_text(RECORDER)
        self.python.chmod(0o755)
        defines = install.entry_point_cflags(DEFAULTS)
        defines[0] = f"-DVNETDP_PYTHON={install.c_string(str(self.python))}"
        self.path = build(d / "vnetdp", *defines)
        self.ipam = str(d / "vnetdp-ipam")
        os.link(self.path, self.ipam)

    def clear(self) -> None:
        for p in self.dir.glob("exec.*"):
            p.unlink()

    def exec_record(self) -> tuple[list[str], dict[str, str], bytes] | None:
        found = list(self.dir.glob("exec.*"))
        if not found:
            return None
        [path] = found
        head, _, stdin = path.read_bytes().partition(b"--stdin\n")
        args, _, env = head.decode().partition("--env\n")
        return args.splitlines(), dict(line.split("=", 1) for line in env.splitlines() if "=" in line), stdin


@pytest.fixture(scope="module")
def entry_build(tmp_path_factory) -> Entry:
    return Entry(tmp_path_factory.mktemp("entry"))


@pytest.fixture
def entry(entry_build) -> Entry:
    entry_build.clear()
    return entry_build


class FakeAgent:
    """Serves ``<state>/agent.sock`` with wire's framing; ``answer(n, plugin, env, stdin)``
    returns the reply bytes for connection n, or None to hang up without one."""

    def __init__(self, state: str, answer: Callable) -> None:
        self.path = os.path.join(state, "agent.sock")
        self.answer = answer
        self.calls: list[tuple[str, dict, bytes, list[os.stat_result]]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data, fds = wire.recv_request(conn)
                stats = [os.fstat(fd) for fd in fds]
                for fd in fds:
                    os.close(fd)
                plugin, env, stdin = wire.decode_request(data)
                self.calls.append((plugin, env, stdin, stats))
                reply = self.answer(n, plugin, env, stdin)
                n += 1
                if reply is not None:
                    conn.sendall(reply)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def agent(tmp_path) -> Iterator[Callable[[Callable], FakeAgent]]:
    made = []

    def start(answer: Callable, state: Path = tmp_path) -> FakeAgent:
        made.append(FakeAgent(str(state), answer))
        return made[-1]

    yield start
    for a in made:
        a.close()


def call(exe: str, argv: list[str], env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *argv], input=stdin, capture_output=True, env=env, timeout=30)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_the_c_file_says_what_wire_and_the_protocol_say():
    defines = dict(re.findall(r"^#define (\w+) (.+?)\s*(?:/\*.*)?$", SOURCE.read_text(), re.M))
    value = lambda name: eval(defines[name], {"__builtins__": {}})  # noqa: E731  (this repository's own C)
    assert (value("MAX_REQUEST"), value("FIRST_SEND")) == (wire.MAX_REQUEST, wire.FIRST_SEND)
    assert (value("CODE_INVALID_CONFIG"), value("CODE_TRY_AGAIN")) == (Code.INVALID_CONFIG, Code.TRY_AGAIN_LATER)
    assert value("DEFAULT_STATE_DIR") == defaults.DEFAULT_STATE_DIR
    assert f'"%s/{defaults.AGENT_SOCKET}"' in SOURCE.read_text()


# --- the entry point vnetdp install builds --------------------------------------------------
def test_the_agents_reply_is_relayed_with_its_exit_code_and_the_netns_goes_along(entry, agent, tmp_path):
    a = agent(lambda n, plugin, env, stdin: wire.encode_reply(3, b'{"out": 1}', b"some stderr"))
    stdin = json.dumps({**ADD, "padding": "x" * 200_000}).encode()  # several sends after the first
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
           "VNETDP_STATE_DIR": str(tmp_path)}
    proc = call(entry.path, [], env, stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b'{"out": 1}', b"some stderr")
    [(plugin, got_env, got_stdin, fds)] = a.calls
    assert plugin == "vnetdp" and got_stdin == stdin
    assert got_env == {**DEFAULTS, **env}  # the node's defaults, but what the caller set wins
    assert len(fds) == 1 and same_file(fds[0], os.stat("/proc/self/ns/net"))
    assert entry.exec_record() is None


def test_the_name_it_is_called_by_is_the_plugin(entry, agent, tmp_path):
    a = agent(lambda *_: wire.encode_reply(0, b"{}", b""))
    assert call(entry.ipam, [], {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)}, b"{}").returncode == 0
    assert a.calls[0][0] == "vnetdp-ipam"


def _runs_in_process(entry: Entry, plugin: str, stdin: bytes, env: dict[str, str],
                     proc: subprocess.CompletedProcess) -> None:
    assert (proc.returncode, proc.stdout) == (3, b'{"in-process": true}\n'), proc.stderr
    args, got_env, got_stdin = entry.exec_record()
    assert args == ["-S", str(REPO / "cni" / "vnetdp"), plugin] and got_stdin == stdin
    assert {k: got_env.get(k) for k in env} == env and got_env["VNETDP_NO_AGENT"] == "1"
    assert got_env["VNETDP_IPAM_URL"] == DEFAULTS["VNETDP_IPAM_URL"]


def test_without_an_agent_the_python_entry_point_runs_the_call(entry, tmp_path):
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/ns/net", "VNETDP_STATE_DIR": str(tmp_path)}
    stdin = json.dumps(ADD).encode()
    _runs_in_process(entry, "vnetdp", stdin, env, call(entry.path, [], env, stdin))


def test_no_agent_asked_for_is_no_agent_called(entry, agent, tmp_path):
    a = agent(lambda *_: wire.encode_reply(0, b"{}", b""))
    env = {"CNI_COMMAND": "DEL", "VNETDP_STATE_DIR": str(tmp_path), "VNETDP_NO_AGENT": "1"}
    _runs_in_process(entry, "vnetdp-ipam", b"{}", env, call(entry.ipam, [], env, b"{}"))
    assert a.calls == []


@pytest.mark.parametrize("size", [10, 300_000])
def test_a_worker_that_dies_mid_call_leaves_the_call_to_the_python_entry_point(entry, agent, tmp_path, size):
    a = agent(lambda *_: None)
    env = {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)}
    stdin = os.urandom(size)  # what the client read already reaches the in-process call whole
    _runs_in_process(entry, "vnetdp", stdin, env, call(entry.path, [], env, stdin))
    assert len(a.calls) == 1


def test_a_call_larger_than_the_agent_takes_runs_in_process(entry, agent, tmp_path):
    a = agent(lambda *_: wire.encode_reply(0, b"{}", b""))
    env = {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)}
    stdin = os.urandom(wire.MAX_REQUEST)
    _runs_in_process(entry, "vnetdp", stdin, env, call(entry.path, [], env, stdin))
    assert a.calls == []


def test_the_entry_point_is_never_a_delegate(entry):
    with open(entry.path, "rb") as f:
        assert invoke.SELF_MARKER in f.read(4096)
    with pytest.raises(CniError):
        invoke._refuse_self("vnetdp", entry.ipam)


# --- the real thing: vnetdp install's entry point, the Python one and the agent's runner -------
_ONE_CALL_AGENT = """
import socket, sys
from vnetdp.agent import server, wire
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
print("listening", flush=True)
conn, _ = s.accept()
conn.sendall(server.run_call(*wire.recv_request(conn)))
"""


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """``vnetdp install`` into tmp_path/bin (not compiling the datapath; no bpffs mounted)."""
    from vnetdp.datapath import bpffs

    compiler()
    monkeypatch.setattr(bpffs, "ensure_mounted", lambda pin_dir: None)
    written = install.install(str(tmp_path / "bin"), str(tmp_path / "net.d"), str(tmp_path / "state"),
                              str(tmp_path / "bpffs"), "http://127.0.0.1:1/doc", compile_programs=False,
                              log_dir=str(tmp_path / "log"))
    assert f"{tmp_path}/bin/vnetdp (compiled entry point)" in written
    os.makedirs(tmp_path / "log")
    return tmp_path


def test_install_builds_one_entry_point_for_both_plugins(installed):
    network, ipam = (installed / "bin" / name for name in ("vnetdp", "vnetdp-ipam"))
    assert network.read_bytes() == ipam.read_bytes() and network.read_bytes().startswith(b"\x7fELF")
    assert os.access(network, os.X_OK)
    proc = call(str(ipam), [], {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')  # no agent: in-process
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "0.4.0"


def test_a_netns_that_does_not_open_is_code_4_through_the_agent_and_in_process(installed):
    """The entry point hands an unopenable CNI_NETNS over as a path; the
    agent's worker then answers exactly as the in-process call does."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(installed / "gone"),
           "CNI_IFNAME": "eth0", "CNI_PATH": str(installed / "bin")}
    stdin = json.dumps(ADD).encode()
    in_process = call(str(installed / "bin" / "vnetdp"), [], env, stdin)
    sock = str(installed / "state" / "agent.sock")
    runner = subprocess.Popen([sys.executable, "-c", _ONE_CALL_AGENT, sock], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert runner.stdout.readline() == b"listening\n"
        via_agent = call(str(installed / "bin" / "vnetdp"), [], env, stdin)
        assert runner.wait(30) == 0
    finally:
        runner.kill()
    for proc in (in_process, via_agent):
        error = json.loads(proc.stdout)
        assert (proc.returncode, error["code"], error["cniVersion"]) == (1, 4, "1.0.0")
        assert error["msg"] == f"CNI_NETNS {installed / 'gone'}: no such network namespace"


def test_install_writes_the_python_entry_point_when_asked_or_without_a_compiler(tmp_path, monkeypatch):
    from vnetdp.datapath import bpffs

    monkeypatch.setattr(bpffs, "ensure_mounted", lambda pin_dir: None)
    args = (str(tmp_path / "conf"), str(tmp_path / "state"), str(tmp_path / "bpffs"))
    written = install.install(str(tmp_path / "asked"), *args, compile_programs=False, python_entry=True)
    assert f"{tmp_path}/asked/vnetdp (Python entry point)" in written
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    written = install.install(str(tmp_path / "nocc"), *args, compile_programs=False)
    assert any(w.startswith(f"{tmp_path}/nocc/vnetdp (Python entry point: ") for w in written)
    for d in ("asked", "nocc"):
        assert (tmp_path / d / "vnetdp").read_text() == install.entry_point_text(
            {"VNETDP_STATE_DIR": str(tmp_path / "state"), "VNETDP_BPFFS_DIR": str(tmp_path / "bpffs")})


# --- the node image's host client -----------------------------------------------------------
def test_a_call_and_its_reply_go_through_the_agent_unchanged(client, agent, tmp_path):
    a = agent(lambda n, plugin, env, stdin: wire.encode_reply(3, b'{"out": 1}', b"some stderr"))
    netns = tmp_path / "netns"  # any file: the client opens CNI_NETNS and hands the descriptor over
    netns.write_text("")
    stdin = json.dumps({**ADD, "padding": "x" * 200_000}).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": str(netns), "CNI_IFNAME": "eth0", "VNETDP_STATE_DIR": str(tmp_path)}
    proc = call(client, ["vnetdp-ipam"], env, stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b'{"out": 1}', b"some stderr")
    [(plugin, got_env, got_stdin, fds)] = a.calls
    assert plugin == "vnetdp-ipam" and got_stdin == stdin and got_env == env
    assert len(fds) == 1 and same_file(fds[0], netns.stat())


@pytest.mark.parametrize("build", ["client", "entry"])
def test_a_netns_that_does_not_open_goes_as_a_path_only(build, client, entry, agent, tmp_path):
    a = agent(lambda *_: wire.encode_reply(0, b"{}", b""))
    env = {"CNI_COMMAND": "DEL", "CNI_NETNS": str(tmp_path / "gone"), "VNETDP_STATE_DIR": str(tmp_path)}
    exe, argv = (client, ["vnetdp"]) if build == "client" else (entry.path, [])
    assert call(exe, argv, env, b"{}").returncode == 0
    assert a.calls[0][3] == [] and a.calls[0][1]["CNI_NETNS"] == str(tmp_path / "gone")


def test_a_worker_that_dies_mid_call_is_retried(client, agent, tmp_path):
    a = agent(lambda n, *_: None if n == 0 else wire.encode_reply(0, b'{"ok": true}', b""))
    proc = call(client, ["vnetdp"], {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)}, b"{}")
    assert (proc.returncode, proc.stdout) == (0, b'{"ok": true}') and len(a.calls) == 2


def test_no_agent_is_a_retryable_cni_error_in_the_configs_version(client, tmp_path):
    proc = call(client, ["vnetdp"], {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)},
                b'{"cniVersion": "0.4.0", "name": "n"}')
    error = json.loads(proc.stdout)
    assert proc.returncode == 1 and error["code"] == 11 and error["cniVersion"] == "0.4.0"
    assert str(tmp_path / "agent.sock") in error["details"]


def test_called_without_a_plugin_name_it_refuses(client, tmp_path):
    proc = call(client, [], {"CNI_COMMAND": "ADD", "VNETDP_STATE_DIR": str(tmp_path)}, b"{}")
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 7


# --- vnetdp-node-init: the client and its wrappers on the host --------------------------------
def load_node_init():
    """deploy/kubernetes/vnetdp-node-init (a script without .py) as a module."""
    spec = spec_from_loader("vnetdp_node_init", SourceFileLoader("vnetdp_node_init", str(NODE_INIT)))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wrappers_set_the_nodes_defaults_and_are_never_a_delegate(client, tmp_path):
    node_init = load_node_init()
    state = tmp_path / "state"
    defaults = {"VNETDP_STATE_DIR": str(state), "VNETDP_IPAM_URL": "http://127.0.0.1:1/doc?a=b&c='d'"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(client, bin_dir / "vnetdp-cni-client")
    for plugin in ("vnetdp", "vnetdp-ipam"):
        (bin_dir / plugin).write_text(node_init.wrapper(plugin, str(bin_dir), defaults))
        (bin_dir / plugin).chmod(0o755)
    state.mkdir()
    a = FakeAgent(str(state), lambda *_: wire.encode_reply(0, b"{}", b""))
    try:
        # A runtime's clean environment: the wrapper's defaults reach the agent...
        assert call(str(bin_dir / "vnetdp-ipam"), [], {"CNI_COMMAND": "ADD"}, b"{}").returncode == 0
        # ...unless the caller set them.
        env = {"CNI_COMMAND": "ADD", "VNETDP_IPAM_URL": ""}
        assert call(str(bin_dir / "vnetdp"), [], env, b"{}").returncode == 0
    finally:
        a.close()
    (p1, env1, _, _), (p2, env2, _, _) = a.calls
    assert (p1, p2) == ("vnetdp-ipam", "vnetdp")
    assert {k: env1[k] for k in defaults} == defaults
    assert env2["VNETDP_IPAM_URL"] == "" and env2["VNETDP_STATE_DIR"] == str(state)
    with pytest.raises(CniError):
        invoke._refuse_self("vnetdp", str(bin_dir / "vnetdp"))


def test_the_init_step_installs_client_wrappers_and_conflist_from_vnetdp_install(tmp_path, monkeypatch, capsys):
    """vnetdp-node-init with a real ``vnetdp install`` (not compiling; no bpffs mounted)."""
    from vnetdp.datapath import bpffs

    node_init = load_node_init()
    fake_client = tmp_path / "client"
    fake_client.write_bytes(b"\x7fELF not really")
    monkeypatch.setattr(node_init, "CLIENT", str(fake_client))
    monkeypatch.setattr(node_init, "STAGING", str(tmp_path / "staging"))
    monkeypatch.setattr(bpffs, "ensure_mounted", lambda pin_dir: None)
    bin_dir, conf_dir, state = tmp_path / "bin", tmp_path / "net.d", tmp_path / "state"
    rc = node_init.main([f"--cni-bin-dir={bin_dir}", f"--cni-conf-dir={conf_dir}", f"--state-dir={state}",
                         f"--bpffs-dir={tmp_path}/bpffs/vnetdp", "--ipam-url", "http://127.0.0.1:1/doc",
                         "--cni-version=1.0.0", "--set=enableSnat=false", "--no-compile"])
    assert rc == 0, capsys.readouterr()
    assert sorted(os.listdir(bin_dir)) == ["vnetdp", "vnetdp-cni-client", "vnetdp-ipam"]
    assert (bin_dir / "vnetdp-cni-client").read_bytes() == fake_client.read_bytes()
    assert os.access(bin_dir / "vnetdp-cni-client", os.X_OK) and os.access(bin_dir / "vnetdp", os.X_OK)
    # The wrappers carry exactly the defaults vnetdp install put into its own entry points.
    staged = node_init.entry_point_defaults(str(tmp_path / "staging" / "bin" / "vnetdp"))
    assert staged["VNETDP_STATE_DIR"] == str(state) and staged["VNETDP_IPAM_URL"] == "http://127.0.0.1:1/doc"
    assert (bin_dir / "vnetdp").read_text() == node_init.wrapper("vnetdp", str(bin_dir), staged)
    conflist = json.loads((conf_dir / "10-vnetdp.conflist").read_text())
    assert conflist["cniVersion"] == "1.0.0" and conflist["plugins"][0]["type"] == "vnetdp"
    assert json.loads((state / "node.json").read_text())
