"""containerd for one test, inside a lab VM's network namespace, sharing
nothing of the host's containerd (../shared/REAL-CLIENTS.md's recipe):

- ``ip netns exec`` gives the daemon its own mount namespace (mounts made in
  it never reach the host: iproute2 makes it a recursive slave); in it a
  wrapper shell mounts a tmpfs on /run (shim sockets under
  /run/containerd/s, runc's state under /run/containerd/runc: private) after
  moving the lab's directory (/run/vnetdp-lab: the installed plugins, the
  node's state, the agent's socket) aside and back into it, and mounts the
  cgroup hierarchies the host has (``ip netns exec`` mounts a fresh /sys,
  which hides them; runc needs them);
- root, state, temp, gRPC socket, the opt plugin's directory and the CRI
  plugin's files are under one temp directory, named in the config file;
  /var/lib is a private tmpfs too (libcni's result cache, /var/lib/cni);
- the wrapper ``exec``s containerd, so the process started here (in its own
  session: ``setsid``) is containerd, stopped by that PID.

Everything containerd mounts (overlay rootfs, sandbox /dev/shm, the pods'
netns bind mounts) lives in that private mount namespace and vanishes with it
once its last process (containerd, its shims) is gone. ``stop`` makes sure it
is gone: sandboxes removed through CRI by the caller first, then leftover
mounts lazily unmounted, then containerd by PID, then any shim still serving
this containerd's socket (found by that socket's unique path on its command
line) and the processes it runs, and last any cgroup runc left behind for a
sandbox of ours."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from vnetdp.lab.daemons import CGROUP_ROOT, SAFE_PATH, host_cgroup_mounts
from vnetdp.lab.daemons import pids as _all_pids
from vnetdp.lab.daemons import ppid as _ppid
from vnetdp.lab.daemons import unescape as _unescape
from vnetdp.lab.daemons import wait_gone as _wait_gone


#: Directories the daemon and its plugins write to whatever the config says,
#: made private tmpfs: libcni keeps its result cache in /var/lib/cni (not
#: configurable through containerd 1.6), which the host does not have.
PRIVATE = ("/var/lib",)


def wrapper_script(tmp: Path, config: Path, keep: list[str], cgroup_lines: list[str],
                   private: tuple[str, ...] = PRIVATE) -> str:
    """The shell run by ``ip netns exec``: private /run (``keep``: directories
    under /run moved into it unchanged) and ``private`` directories, cgroups,
    then containerd."""
    q = shlex.quote
    lines = ["set -eu"]
    for i, path in enumerate(keep):
        lines += [f"mkdir -p {q(str(tmp / 'keep' / str(i)))}", f"mount --rbind {q(path)} {q(str(tmp / 'keep' / str(i)))}"]
    lines += [f"mount -t tmpfs -o mode=755 tmpfs {q(path)}" for path in private]
    lines.append("mount -t tmpfs -o mode=755 tmpfs /run")
    for i, path in enumerate(keep):
        lines += [f"mkdir -p {q(path)}", f"mount --move {q(str(tmp / 'keep' / str(i)))} {q(path)}"]
    lines += cgroup_lines
    lines += [f"export PATH={SAFE_PATH}", f"exec containerd --config {q(str(config))}"]
    return "\n".join(lines) + "\n"


class Containerd:
    """One containerd in network namespace ``ns``, everything of it in ``tmp``."""

    def __init__(self, ns: str, tmp: Path, keep: list[str]) -> None:
        if any(str(tmp).startswith(k.rstrip("/") + "/") for k in ["/run", *keep, *PRIVATE]):
            raise ValueError(f"{tmp} would be hidden by the daemon's private mounts")
        self.ns, self.tmp, self.keep = ns, tmp, keep
        self.root, self.state = tmp / "root", tmp / "state"
        self.socket = tmp / "containerd.sock"
        self.config = tmp / "config.toml"
        self.log = tmp / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self.unmounted: list[str] = []   # mounts ``stop`` found left and unmounted
        self.killed: list[str] = []      # processes ``stop`` had to kill besides containerd

    # --- paths ------------------------------------------------------------
    @property
    def cri_state(self) -> Path:
        """The CRI plugin's state directory (``<state>/io.containerd.grpc.v1.cri``)."""
        return self.state / "io.containerd.grpc.v1.cri"

    @property
    def netns_dir(self) -> Path:
        """Where sandboxes' netns are bind-mounted with netns_mounts_under_state_dir."""
        return self.cri_state / "netns"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- start --------------------------------------------------------------
    def start(self) -> None:
        for d in (self.root, self.state):
            d.mkdir(parents=True, exist_ok=True)
        script = wrapper_script(self.tmp, self.config, self.keep, host_cgroup_mounts())
        (self.tmp / "wrapper.sh").write_text(script)
        with open(self.log, "ab") as log:
            # A clean environment: PATH for the plugins (portmap runs iptables), and
            # no VNETDP_NO_AGENT, so vnetdp hands its calls to the node's agent.
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "bash", str(self.tmp / "wrapper.sh")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True)

    def ours(self, pid: int) -> bool:
        """``pid`` is still the containerd started here (checked before a signal)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return False
        return bool(argv) and os.path.basename(argv[0]) in (b"containerd", b"ip", b"bash") \
            and str(self.tmp).encode() in b" ".join(argv)

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``ctr`` against this containerd, namespace k8s.io (CRI's). ctr only talks
        to the socket (content, snapshots and unpacking happen in the daemon),
        so it runs from here, outside the VM namespace."""
        return subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def plugin_status(self, plugin_type: str, plugin_id: str) -> str:
        """``ok``, ``skip`` or ``error`` as ``ctr plugins ls`` says ('' if absent)."""
        out = self.ctr("plugins", "ls").stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 3 and cols[0] == plugin_type and cols[1] == plugin_id:
                return cols[-1]
        return ""

    # --- what it holds ------------------------------------------------------------
    def mounts_under(self, prefix: Path) -> list[str]:
        """Mount points under ``prefix`` in containerd's mount namespace."""
        if not self.alive():
            return []
        try:
            with open(f"/proc/{self.pid}/mountinfo") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        points = [_unescape(line.split()[4]) for line in lines if len(line.split()) > 4]
        return [p for p in points if p == str(prefix) or p.startswith(str(prefix) + "/")]

    def shims(self) -> list[int]:
        """Processes serving this containerd: shims carry its socket's path
        (``-address``), unique to this test, on their command line."""
        mark = str(self.socket).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in os.path.basename(argv[0]) and any(mark in a for a in argv):
                found.append(int(entry))
        return found

    # --- stop ---------------------------------------------------------------------
    def stop(self, sandbox_ids: list[str] = ()) -> None:
        """containerd and all it started gone (sandboxes should have been
        removed through CRI before; whatever is left is forced)."""
        if self.alive():
            # Mounts still there (a netns bind mount RemovePodSandbox missed, a rootfs):
            # unmounted in containerd's own mount namespace, deepest first.
            for point in sorted(self.mounts_under(self.tmp), key=len, reverse=True):
                subprocess.run(["nsenter", "-t", str(self.pid), "-m", "umount", "-l", point],
                               capture_output=True, timeout=30)
                self.unmounted.append(point)
            if self.ours(self.pid):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                if self.ours(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        elif self.proc is not None:
            self.proc.wait(timeout=10)
        shims = self.shims()
        children = [pid for pid in _all_pids() if _ppid(pid) in shims]
        for pid in children + shims:  # what a shim runs first, so nothing is reparented and missed
            with _quiet():
                os.kill(pid, signal.SIGKILL)
            self.killed.append(f"{pid} ({'shim' if pid in shims else 'sandbox process'})")
        _wait_gone(children + shims)
        if sandbox_ids:
            remove_cgroups(set(sandbox_ids))


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, ProcessLookupError)


def remove_cgroups(sandbox_ids: set[str], root: str = CGROUP_ROOT) -> list[str]:
    """Remove the (empty) cgroups runc made for these sandboxes and left
    behind (it removes them itself when a sandbox is stopped normally): a
    directory named by a sandbox ID in any hierarchy of the host."""
    removed = []
    for top, dirs, _ in os.walk(root, topdown=False):
        for d in dirs:
            if d in sandbox_ids:
                path = os.path.join(top, d)
                try:
                    os.rmdir(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed
