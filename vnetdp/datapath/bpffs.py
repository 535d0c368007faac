"""The bpffs directory of one node: where its programs, maps and links are pinned.

Layout under ``root``::

    maps/<name>             maps, shared by every program version
    progs/<build>/<name>    programs of one build (hash of sources + flags)
    progs/current           symlink to the build the node runs (the marker)
    progs/previous          symlink to the build it ran before, kept for a rollback
    links/<hook>-<ifname>   BPF links attaching programs to devices

bpffs refuses names with a dot, so dots in interface names become ``~``
and temporary names end in ``~new``. It holds no regular files, but it does
hold symlinks, renamed over each other atomically: the markers are symlinks.

``plan_mount``/``ensure_mounted``: ``vnetdp install`` and the agent mount a
bpffs when the pin directory is on none.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)


CURRENT, PREVIOUS = "current", "previous"  # marker names in progs/


class NotBpffs(Exception):
    """The pin directory is not inside a mounted bpf filesystem."""


class MountRefused(NotBpffs):
    """No bpffs can be mounted for the pin directory without hiding files."""


def is_bpffs(path: str) -> bool:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def remove_pin(path: str) -> bool:
    """Unlink one pin; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Bpffs:
    root: str

    @property
    def maps_dir(self) -> str:
        return os.path.join(self.root, "maps")

    def progs_dir(self, build: str) -> str:
        return os.path.join(self.progs_root, build)

    @property
    def links_dir(self) -> str:
        return os.path.join(self.root, "links")

    def link_pin(self, ifname: str, hook: str) -> str:
        return os.path.join(self.links_dir, f"{hook}-{ifname.replace('.', '~')}")

    def make_dirs(self) -> None:
        """Create the directories; the root must already be on a bpffs."""
        parent = self.root
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not is_bpffs(parent):
            raise NotBpffs(f"{self.root} is not on a bpf filesystem "
                           f"(mount one: mount -t bpf bpf {parent})")
        for d in (self.maps_dir, self.progs_root, self.links_dir):
            os.makedirs(d, exist_ok=True)

    @property
    def progs_root(self) -> str:
        return os.path.join(self.root, "progs")

    def builds(self) -> list[str]:
        """The builds pinned (directories; the markers are not builds)."""
        try:
            with os.scandir(self.progs_root) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    # --- markers: which build runs, which ran before --------------------
    def marker(self, which: str) -> str | None:
        """The build ``which`` (CURRENT or PREVIOUS) names; None when unset."""
        try:
            target = os.readlink(os.path.join(self.progs_root, which))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return os.path.basename(target) or None

    def set_marker(self, which: str, build: str | None) -> None:
        """Point ``which`` at ``build`` atomically (a symlink renamed over the
        old one); None removes it."""
        path = os.path.join(self.progs_root, which)
        if build is None:
            remove_pin(path)
            return
        tmp = path + "~new"
        remove_pin(tmp)
        os.symlink(build, tmp)
        os.rename(tmp, path)


@dataclass(frozen=True)
class MountPlan:
    """Where a bpffs must be mounted for a pin directory (``path`` None: the
    directory is on one already), and the directories to create first."""

    path: str | None
    create: tuple[str, ...] = ()


def plan_mount(pin_dir: str) -> MountPlan:
    """Where the bpffs for ``pin_dir`` goes when none is mounted there: at its
    nearest existing ancestor (or itself) when that is an empty directory (the
    usual case: ``/sys/fs/bpf`` unmounted, for ``/sys/fs/bpf/vnetdp``); else at
    the highest directory of its path still missing, created for it. A
    directory that exists with files in it and is no bpffs is never mounted
    over (its files would vanish under the mount): MountRefused."""
    pin_dir = os.path.abspath(pin_dir)
    missing: list[str] = []
    nearest = pin_dir
    while not os.path.lexists(nearest):
        missing.append(nearest)
        nearest = os.path.dirname(nearest)
    if is_bpffs(nearest):
        return MountPlan(None)
    if not os.path.isdir(nearest) or os.path.islink(nearest):
        raise MountRefused(f"{nearest} is not a directory: cannot mount a bpf filesystem for {pin_dir}")
    if not os.listdir(nearest) and nearest != "/":
        return MountPlan(nearest)
    if not missing:
        raise MountRefused(f"{pin_dir} is not on a bpf filesystem and holds files, which a mount would hide: "
                           f"mount one yourself (mount -t bpf bpf DIR) or choose another --bpffs-dir")
    return MountPlan(missing[-1], (missing[-1],))


def ensure_mounted(pin_dir: str) -> str | None:
    """Mount a bpffs for ``pin_dir`` when it is on none (see ``plan_mount``);
    the mount point when one was mounted, None when there was one already."""
    plan = plan_mount(pin_dir)
    if plan.path is None:
        return None
    for d in plan.create:
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        except OSError as e:
            raise MountRefused(f"cannot create {d} to mount a bpf filesystem for {pin_dir}: {e.strerror}") from e
    mount(plan.path)
    return plan.path


def mount(path: str) -> None:
    """Mount a fresh, private bpffs instance at ``path`` (created if needed)."""
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs at {path}: {os.strerror(err)}")


def unmount(path: str) -> None:
    """Lazily unmount ``path``; not mounted is fine."""
    MNT_DETACH = 2
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"unmount {path}: {os.strerror(err)}")
