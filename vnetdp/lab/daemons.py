"""What running a container daemon (dockerd, containerd) inside a lab VM's
network namespace needs from the host: the cgroup mounts to rebuild in the
daemon's private mount namespace, and processes looked up by PID (command
line, parent, mount namespace) so that only our own are ever signalled.

Shared by vnetdp/lab/docker.py and the containerd CRI test (tests/e2e/cri)."""
from __future__ import annotations

import os
import shlex
import time

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = "/sys/fs/cgroup"


def unescape(field: str) -> str:
    """A /proc mounts field with its octal escapes (\\040 for a space) undone."""
    out, i = "", 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out += chr(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def host_cgroup_mounts(mounts: str | None = None, controllers: set[str] | None = None) -> list[str]:
    """Shell lines that rebuild this process's cgroup mounts under
    /sys/fs/cgroup: cgroup2 alone on a v2 host; on a v1 or hybrid host a
    tmpfs and each hierarchy as the host mounts it (same controllers and
    name), the unified cgroup2 too when the host has one."""
    if mounts is None:
        with open("/proc/self/mounts") as f:
            mounts = f.read()
    if controllers is None:
        with open("/proc/cgroups") as f:
            controllers = {line.split()[0] for line in f if line.strip() and not line.startswith("#")}
    table = []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            table.append((parts[2], unescape(parts[1]), parts[3].split(",")))
    root_type = next((fs for fs, where, _ in reversed(table) if where == CGROUP_ROOT), None)
    if root_type == "cgroup2":
        return [f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}"]
    lines = [f"mount -t tmpfs -o mode=755 tmpfs {CGROUP_ROOT}"]
    for fs, where, options in table:
        if not where.startswith(CGROUP_ROOT + "/") or fs not in ("cgroup", "cgroup2"):
            continue
        q = shlex.quote(where)
        if fs == "cgroup2":
            lines.append(f"mkdir -p {q}; mount -t cgroup2 cgroup2 {q}")
            continue
        keep = [o for o in options if o in controllers or o.startswith("name=")]
        if not any(o in controllers for o in keep):
            keep.insert(0, "none")  # a named hierarchy without controllers (name=systemd)
        lines.append(f"mkdir -p {q}; mount -t cgroup -o {','.join(keep)} cgroup {q}")
    return lines


# --- processes by PID ----------------------------------------------------------------
def pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def ppid(pid: int) -> int:
    """The parent's PID (-1 when ``pid`` is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def cmdline(pid: int) -> bytes:
    """The raw command line, NUL-separated (empty when ``pid`` is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def mnt_ns(pid: int) -> str | None:
    """The mount namespace's identity (``mnt:[4026532...]``), None when ``pid`` is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def wait_gone(gone: list[int], seconds: float = 10) -> None:
    """Until none of these processes exists any more, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in gone):
        time.sleep(0.05)
