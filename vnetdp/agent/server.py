"""The node's resident agent: a fast path for CNI calls, and SNAT expiry.

A CNI plugin is a process per call; vnetdp's Python start-up with pyroute2
costs ~0.2 s. The agent has everything imported already: the installed entry
points hand each call (environment and stdin, framed by ``wire``) over a unix
socket in the state directory to one of a few pre-forked workers, which runs
exactly the code the entry point would run in-process, replies with its
stdout, stderr and exit code, and exits; the agent forks a replacement.
Workers warm up before they accept (pyroute2's lazy imports, copy-on-write
faults), so a call pays for neither, and they die with the agent. When the
agent is not running the entry points run the call themselves, so it is an
accelerator, never a dependency. The agent must run in the node's network
namespace. As it starts it configures the node, as the first ADD would; then
it sweeps the SNAT table every few seconds.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable

from vnetdp import defaults, netns, plugins
from vnetdp.agent import wire

PR_SET_PDEATHSIG = 1
log = logging.getLogger("vnetdp.agent")


def run_call(request: bytes, fds: list[int] = ()) -> bytes:
    """One framed CNI call, run as the entry point would run it (with the
    caller's netns descriptor standing for CNI_NETNS); the framed reply."""
    plugin, env, stdin = wire.decode_request(request)
    os.environ.clear()
    os.environ.update(env)
    if fds and env.get("CNI_NETNS"):
        netns.provide(env["CNI_NETNS"], fds[0])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = plugins.run(plugin, stdin=stdin)
    return wire.encode_reply(rc, out.getvalue().encode(), err.getvalue().encode())


def _serve_one(conn: socket.socket) -> None:
    fds: list[int] = []
    try:
        request, fds = wire.recv_request(conn)
        reply = run_call(request, fds)
    except Exception:  # no reply: the entry point runs the call itself
        log.exception("call failed in the agent")
        return
    finally:  # before the reply: a caller may unmount the namespace's path as soon as it has one
        for fd in fds:
            os.close(fd)
    conn.sendall(reply)


def _warm_up() -> None:
    """Touch what a call touches (pyroute2 imports much of itself on first
    use): one link, loopback, as a dump of every link grows with the pods."""
    from pyroute2 import IPRoute

    from vnetdp.network import config
    config.parse({"cniVersion": "1.1.0", "name": "warm-up", "type": plugins.NETWORK,
                  "ipam": {"type": plugins.IPAM}})
    with IPRoute() as ipr:
        ipr.get_links(1)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the agent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(0)


def _worker(server: socket.socket, parent: int) -> None:
    """A pre-forked child: warm up, serve one connection, exit (what it
    allocated goes with it: no garbage collection)."""
    try:
        _die_with_parent(parent)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        gc.disable()  # a collection in a fresh fork walks all the agent's objects, faulting in copies of their pages
        _warm_up()
        conn, _ = server.accept()
        server.close()
        with conn:
            _serve_one(conn)
    finally:
        os._exit(0)


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(512)
    return server


def _mount_bpffs(bpffs_dir: str | None) -> None:
    """Mount a bpffs for the pin directory when none is (SPEC §10), and say so.
    A refusal (files where the mount would go) is reported, not fatal: the
    CNI fast path serves anyway, and ADD names the problem."""
    from vnetdp.datapath import bpffs

    if not bpffs_dir:
        return
    try:
        mounted = bpffs.ensure_mounted(bpffs_dir)
    except (bpffs.NotBpffs, OSError) as e:
        log.error("no bpf filesystem for %s: %s", bpffs_dir, e)
        print(f"vnetdp agent: no bpf filesystem for {bpffs_dir}: {e}", file=sys.stderr)
        return
    if mounted:
        log.warning("mounted a bpf filesystem at %s for %s: none was mounted", mounted, bpffs_dir)
        print(f"vnetdp agent: mounted a bpf filesystem at {mounted} for {bpffs_dir}: none was mounted",
              file=sys.stderr)


def _configure_node(state_dir: str, bpffs_dir: str | None) -> None:
    """Configure the node now, as the first ADD would (NIC programs attached,
    node map written): tcx's link on the NIC alone waits ~15 ms for the
    kernel, which no pod should. Nothing to do before ``vnetdp install``; a
    failure is logged and left to the first ADD, which reports it. Run in a
    child of the agent (``_in_child``): after a reboot it compiles the
    programs, and bcc must not stay in the process every worker forks from."""
    from vnetdp import rtnl
    from vnetdp.datapath import settings
    from vnetdp.datapath.node import node_for

    if not bpffs_dir or not os.path.exists(settings.NodeSettingsFile(state_dir).path):
        return
    try:
        node = node_for(state_dir, bpffs_dir)
        with rtnl.Rtnl() as rt:
            node.ensure(rt)
    except Exception as e:  # noqa: BLE001 - anything: the agent serves calls regardless
        log.warning("the node is not configured yet (the first ADD will try again): %s", e)


def _in_child(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child and wait for it."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def serve(state_dir: str, bpffs_dir: str | None, sweep_every: float = 2.0, workers: int = 8) -> None:
    """Serve until SIGTERM with ``workers`` warm workers waiting; sweep the
    SNAT table every ``sweep_every`` seconds."""
    from pyroute2 import IPRoute

    from vnetdp.datapath import maps, policy_maps, snat, syscall

    _mount_bpffs(bpffs_dir)
    plugins.preload()
    # maps.h's layouts (~19 ms), each map's types and bpf()'s (~1 ms each): parsed
    # once for every worker, not in each one's call
    for declared in (maps.Maps, policy_maps.PolicyMaps):
        declared.parse_layouts()
    syscall.parse_types()
    _in_child(lambda: _configure_node(state_dir, bpffs_dir))
    with IPRoute() as ipr:
        ipr.get_links()
    os.makedirs(state_dir, exist_ok=True)
    path = defaults.agent_socket(state_dir)
    server = _listen(path)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)  # drained after every wake-up, also one by the sweep's timeout
    signal.set_wakeup_fd(wake_w)  # a worker's exit (SIGCHLD) wakes the loop
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sweeper = snat.Sweeper(bpffs_dir, sweep_every) if bpffs_dir else None
    if sweeper:  # the first sweep before the first workers: they inherit what it loaded (map types, modules)
        sweeper.sweep_if_due()
    idle: set[int] = set()
    me = os.getpid()
    try:
        while True:
            while len(idle) < workers:
                pid = os.fork()
                if pid == 0:
                    _worker(server, me)
                idle.add(pid)
            select.select([wake_r], [], [], sweeper.seconds_left() if sweeper else None)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            while idle:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                idle.discard(pid)
            if sweeper:
                sweeper.sweep_if_due()
    finally:
        for pid in idle:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
