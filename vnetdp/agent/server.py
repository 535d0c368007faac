"""The node's resident agent: a fast path for CNI calls, and SNAT expiry.

A CNI plugin is a process per call; vnetdp's Python start-up with pyroute2
costs ~0.2 s. The agent has everything imported already: the installed entry
points hand each call (environment and stdin) over a unix socket in the state
directory to one of a few pre-forked workers, which runs exactly the code the
entry point would run in-process, replies with its stdout, stderr and exit
code, and exits; the agent forks a replacement. Workers warm up before they
accept (pyroute2's lazy imports, copy-on-write faults), so a call pays for
neither. When the agent is not running the entry points run the call
themselves, so it is an accelerator, never a dependency. The agent must run
in the node's network namespace. Between calls it sweeps the SNAT table.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import signal
import socket
import sys
import time

SOCKET_NAME = "agent.sock"
MAX_REQUEST = 1 << 20


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def _recv_all(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
    return b"".join(chunks)


def parse_request(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """``<plugin>\n<env length>\n<env: KEY=VALUE joined by NUL><stdin>`` (the
    entry point avoids json and socket modules to start fast)."""
    plugin, env_len, rest = data.split(b"\n", 2)
    env_blob, stdin = rest[:int(env_len)], rest[int(env_len):]
    env = dict(os.fsdecode(item).split("=", 1) for item in env_blob.split(b"\0") if item)
    return plugin.decode(), env, stdin


def _run_call(plugin: str, env: dict[str, str], stdin: bytes) -> bytes:
    """One CNI call, as the entry point would run it; the reply
    ``<rc> <stdout length>\n<stdout><stderr>``."""
    from vnetdp.cni import main

    os.environ.clear()
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = (main.ipam if plugin == "vnetdp-ipam" else main.network)(stdin=stdin)
    stdout = out.getvalue().encode()
    return b"%d %d\n%s%s" % (rc, len(stdout), stdout, err.getvalue().encode())


def _serve_one(conn: socket.socket) -> None:
    try:
        reply = _run_call(*parse_request(_recv_all(conn)))
    except Exception:  # no reply: the entry point runs the call itself
        logging.getLogger("vnetdp.agent").exception("call failed in the agent")
        return
    conn.sendall(reply)


def _preload() -> None:
    """Import what every call needs, once, before forking children (a netlink
    round trip too: pyroute2 imports much of itself on first use)."""
    from pyroute2 import IPRoute

    from vnetdp.cni import network  # noqa: F401
    from vnetdp.ipam import plugin  # noqa: F401
    with IPRoute() as ipr:
        ipr.get_links()


def _warm_up() -> None:
    """Touch what a call touches, before one arrives."""
    from pyroute2 import IPRoute

    from vnetdp.cni import config
    config.parse({"cniVersion": "1.1.0", "type": "vnetdp", "ipam": {"type": "vnetdp-ipam"}})
    with IPRoute() as ipr:
        ipr.get_links()


def _worker(server: socket.socket) -> None:
    """A pre-forked child: warm up, serve one connection, exit."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _warm_up()
        conn, _ = server.accept()
        server.close()
        with conn:
            _serve_one(conn)
    finally:
        os._exit(0)


def serve(state_dir: str, bpffs_dir: str | None, sweep_every: float = 2.0, workers: int = 8) -> None:
    """Serve until SIGTERM with ``workers`` warm workers waiting; sweep the
    SNAT table every ``sweep_every`` seconds."""
    from vnetdp.datapath import snat
    from vnetdp.datapath.bpffs import Bpffs
    from vnetdp.datapath.maps import Maps

    _preload()
    log = logging.getLogger("vnetdp.agent")
    os.makedirs(state_dir, exist_ok=True)
    path = socket_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(512)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a worker's exit (SIGCHLD) wakes the loop
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idle: set[int] = set()
    next_sweep = time.monotonic()
    try:
        while True:
            while len(idle) < workers:
                pid = os.fork()
                if pid == 0:
                    _worker(server)
                idle.add(pid)
            select.select([wake_r], [], [], max(0.0, next_sweep - time.monotonic()))
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            while idle:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                idle.discard(pid)
            if bpffs_dir and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_every
                try:
                    with Maps(Bpffs(bpffs_dir).maps_dir) as m:
                        snat.sweep(m)
                except OSError as e:  # maps pinned with the first pod
                    log.debug("no sweep yet: %s", e)
    finally:
        for pid in idle:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
