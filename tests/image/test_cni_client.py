"""The node image's host-side CNI client (deploy/kubernetes/cni-client.c) and the
wrappers vnetdp-node-init writes for it, against vnetdp/agent/wire.py.

The client is the agent's framing written a second time, in C (the host has no
interpreter of the image): these tests hold the two together. A fake agent
serves the socket with wire's own functions. Quick: runs with ``make test``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

from vnetdp.agent import wire
from vnetdp.cni import invoke
from vnetdp.cni.spec import CniError

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "deploy" / "kubernetes" / "cni-client.c"
NODE_INIT = REPO / "deploy" / "kubernetes" / "vnetdp-node-init"


def load_node_init():
    """deploy/kubernetes/vnetdp-node-init (a script without .py) as a module."""
    spec = spec_from_loader("vnetdp_node_init", SourceFileLoader("vnetdp_node_init", str(NODE_INIT)))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (gcc)")
    out = str(tmp_path_factory.mktemp("client") / "vnetdp-cni-client")
    # As the Containerfile builds it, less -static (libc.a may be missing here): same code.
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, str(SOURCE)], check=True)
    return out


class FakeAgent:
    """Serves ``<state>/agent.sock`` with wire's framing; ``answer(n, plugin, env, stdin, fds)``
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
                plugin, env, stdin = wire.decode_request(data)
                stats = [os.fstat(fd) for fd in fds]
                for fd in fds:
                    os.close(fd)
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

    def start(answer: Callable) -> FakeAgent:
        made.append(FakeAgent(str(tmp_path), answer))
        return made[-1]

    yield start
    for a in made:
        a.close()


def call(client: str, argv: list[str], env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([client, *argv], input=stdin, capture_output=True, env=env, timeout=30)


def test_a_call_and_its_reply_go_through_the_agent_unchanged(client, agent, tmp_path):
    a = agent(lambda n, plugin, env, stdin: wire.encode_reply(3, b'{"out": 1}', b"some stderr"))
    netns = tmp_path / "netns"  # any file: the client opens CNI_NETNS and hands the descriptor over
    netns.write_text("")
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "vnetdp",
                        "padding": "x" * 200_000}).encode()  # several sends after the first 64 KiB
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": str(netns), "CNI_IFNAME": "eth0", "VNETDP_STATE_DIR": str(tmp_path)}
    proc = call(client, ["vnetdp-ipam"], env, stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b'{"out": 1}', b"some stderr")
    [(plugin, got_env, got_stdin, fds)] = a.calls
    assert plugin == "vnetdp-ipam" and got_stdin == stdin and got_env == env
    assert [(s.st_dev, s.st_ino) for s in fds] == [(netns.stat().st_dev, netns.stat().st_ino)]


def test_a_netns_that_does_not_open_goes_as_a_path_only(client, agent, tmp_path):
    a = agent(lambda *_: wire.encode_reply(0, b"{}", b""))
    env = {"CNI_COMMAND": "DEL", "CNI_NETNS": str(tmp_path / "gone"), "VNETDP_STATE_DIR": str(tmp_path)}
    assert call(client, ["vnetdp"], env, b"{}").returncode == 0
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


def test_the_wrappers_set_the_nodes_defaults_and_are_never_a_delegate(client, agent, tmp_path, monkeypatch):
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
