"""Network namespaces: open by path, and run code inside one.

``enter`` moves the calling thread into a namespace and back, the way the CNI
reference plugins' ``ns.Do`` does; vnetdp's control plane is single-threaded,
so sockets opened inside the block (pyroute2, bpf links) belong to that
namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsNotFound(Exception):
    """The namespace path does not exist or is not a network namespace."""

    def __init__(self, path: str, why: str = "no such network namespace") -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


def path_of(name_or_path: str) -> str:
    """``/run/netns/NAME`` for a bare name, a path unchanged."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def open_ns(name_or_path: str) -> int:
    """An fd for the namespace; raises NetnsNotFound when it is gone."""
    path = path_of(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NetnsNotFound(path) from e
    return fd


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsNotFound(what, os.strerror(err))


@contextlib.contextmanager
def enter(name_or_path: str) -> Iterator[None]:
    """Run the block inside the namespace, then return to the current one."""
    target = open_ns(name_or_path)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, path_of(name_or_path))
        try:
            yield
        finally:
            _setns(here, "original namespace")
    finally:
        os.close(target)
        os.close(here)


def preexec_entering(name_or_path: str):
    """A ``preexec_fn`` that moves a child process into the namespace before it
    runs its program (no ``ip netns exec``: no extra process, same mounts)."""
    target = open_ns(name_or_path)

    def _enter() -> None:
        _setns(target, path_of(name_or_path))
        os.close(target)

    return _enter
