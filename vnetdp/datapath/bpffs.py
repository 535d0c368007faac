"""The bpffs directory of one node: where its programs, maps and links are pinned.

Layout under ``root``::

    maps/<name>             maps, shared by every program version
    progs/<build>/<name>    programs of one build (hash of sources + flags)
    links/<hook>-<ifname>   BPF links attaching programs to devices

bpffs refuses names with a dot, so dots in interface names become ``~``
and temporary names end in ``~new``.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)


class NotBpffs(Exception):
    """The pin directory is not inside a mounted bpf filesystem."""


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
        return os.path.join(self.root, "progs", build)

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
        for d in (self.maps_dir, os.path.join(self.root, "progs"), self.links_dir):
            os.makedirs(d, exist_ok=True)

    def builds(self) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.root, "progs")))
        except FileNotFoundError:
            return []


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
