"""Network namespaces: open by path, and run code inside one.

``enter`` moves the calling thread into a namespace and back, the way the CNI
reference plugins' ``ns.Do`` does; vnetdp's control plane is single-threaded,
so sockets opened inside the block (pyroute2, bpf links) belong to that
namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl: the namespace type of an nsfs fd (Linux 4.11)
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
#: Paths whose namespace the caller handed over as an open descriptor (the
#: agent gets the runtime's CNI_NETNS this way: its own mounts may differ).
_PROVIDED: dict[str, int] = {}


class NetnsNotFound(Exception):
    """The namespace path does not exist or is not a network namespace."""

    def __init__(self, path: str, why: str = "no such network namespace") -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


class NotAPodNetns(Exception):
    """The path names something that must not hold a pod: not a network
    namespace at all (a file, a FIFO, a device), or the node's own."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


def path_of(name_or_path: str) -> str:
    """``/run/netns/NAME`` for a bare name, a path unchanged."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def provide(path: str, fd: int) -> None:
    """From now on, ``path`` means the namespace open at ``fd`` (kept open)."""
    _PROVIDED[path] = fd


def _open(path: str, flags: int) -> int:
    return os.dup(_PROVIDED[path]) if path in _PROVIDED else os.open(path, flags)


def open_ns(name_or_path: str) -> int:
    """An fd for the namespace; raises NetnsNotFound when it is gone."""
    path = path_of(name_or_path)
    try:
        fd = _open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NetnsNotFound(path) from e
    return fd


def open_pod_ns(path: str) -> int:
    """An fd for the network namespace at ``path``, checked to be one and not
    this process's (the node's) own. Never blocks (a FIFO is refused by its
    type before it is opened)."""
    try:
        st = os.fstat(_PROVIDED[path]) if path in _PROVIDED else os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NetnsNotFound(path) from e
    if not stat.S_ISREG(st.st_mode):
        raise NotAPodNetns(path, f"is a {_kind(st.st_mode)}, not a network namespace")
    fd = _open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            raise NotAPodNetns(path, "is not a network namespace")
        st, own = os.fstat(fd), os.stat("/proc/thread-self/ns/net")
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            raise NotAPodNetns(path, "is the node's own network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "file"


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsNotFound(what, os.strerror(err))


@contextlib.contextmanager
def enter(name_or_path: str) -> Iterator[None]:
    """Run the block inside the namespace, then return to the current one."""
    target = open_ns(name_or_path)
    try:
        with enter_fd(target, path_of(name_or_path)):
            yield
    finally:
        os.close(target)


@contextlib.contextmanager
def enter_fd(target: int, what: str) -> Iterator[None]:
    """Run the block inside the namespace ``target`` (an fd the caller keeps)."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, what)
        try:
            yield
        finally:
            _setns(here, "original namespace")
    finally:
        os.close(here)
