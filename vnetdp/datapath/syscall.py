"""The few bpf(2) commands vnetdp needs that bcc does not wrap, via ctypes.

Each function takes and returns plain Python values and raises
:class:`BpfError` (an ``OSError`` carrying errno) on failure. File
descriptors returned are owned by the caller.
"""
from __future__ import annotations

import ctypes
import errno
import os

_SYS_BPF = 321  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
MAP_LOOKUP_BATCH = 24
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
OBJ_GET_INFO_BY_FD = 15
LINK_CREATE = 28
LINK_DETACH = 34

ATTACH_XDP = 37
LINK_TYPE_XDP = 6
ATTACH_TCX_INGRESS = 46
ATTACH_TCX_EGRESS = 47

BPF_ANY = 0


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` tells why."""


class _Attr(ctypes.Structure):
    """Zero-filled room for union bpf_attr; commands overlay their fields."""

    _fields_ = [("raw", ctypes.c_uint8 * 160)]


def _call(cmd: int, fields: ctypes.Structure, what: str) -> int:
    attr = _Attr()
    ctypes.memmove(ctypes.byref(attr), ctypes.byref(fields), ctypes.sizeof(fields))
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    err = ctypes.get_errno()
    # Copied back on failure too: a batch lookup ending in ENOENT reports its count.
    ctypes.memmove(ctypes.byref(fields), ctypes.byref(attr), ctypes.sizeof(fields))
    if ret < 0:
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _addr(buf: ctypes.Array | ctypes.Structure | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


def _found(cmd: int, fields: ctypes.Structure, what: str) -> bool:
    """Run a map command; False where the kernel answers ENOENT (no such entry)."""
    try:
        _call(cmd, fields, what)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup(fd: int, key: ctypes.Structure | ctypes.Array, value) -> bool:
    """Fill ``value`` with the entry for ``key``; False when there is none."""
    return _found(MAP_LOOKUP_ELEM, _MapElem(fd, 0, _addr(key), _addr(value), 0), "map lookup")


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _call(MAP_UPDATE_ELEM, _MapElem(fd, 0, _addr(key), _addr(value), flags), "map update")


def map_delete(fd: int, key) -> bool:
    """Delete ``key``; False when it was not there."""
    return _found(MAP_DELETE_ELEM, _MapElem(fd, 0, _addr(key), 0, 0), "map delete")


def map_next_key(fd: int, key, next_key) -> bool:
    """Write the key after ``key`` (the first one if ``key`` is None); False at the end."""
    return _found(MAP_GET_NEXT_KEY, _MapElem(fd, 0, _addr(key), _addr(next_key), 0), "map next key")


class _MapBatch(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def map_lookup_batch(fd: int, key_type: type, value_type: type, chunk: int = 4096):
    """Every (key, value) of a hash map, ``chunk`` entries per bpf() call."""
    keys, values = (key_type * chunk)(), (value_type * chunk)()
    # The batch cursor is opaque; a key's size is always room enough.
    cursor = ctypes.c_uint8 * max(8, ctypes.sizeof(key_type))
    cursor_in, cursor_out = cursor(), cursor()
    first = True
    while True:
        attr = _MapBatch(0 if first else _addr(cursor_in), _addr(cursor_out), _addr(keys),
                         _addr(values), chunk, fd, 0, 0)
        try:
            _call(MAP_LOOKUP_BATCH, attr, "map lookup batch")
            done = False
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True
        for i in range(attr.count):
            yield key_type.from_buffer_copy(keys[i]), value_type.from_buffer_copy(values[i])
        if done:
            return
        ctypes.memmove(cursor_in, cursor_out, ctypes.sizeof(cursor_out))
        first = False


class _ObjPath(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


def obj_pin(fd: int, path: str) -> None:
    """Pin a program, map or link at ``path`` in a bpffs."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    _call(OBJ_PIN, _ObjPath(_addr(name), fd, 0), f"pin {path}")


def obj_get(path: str) -> int:
    """Open the object pinned at ``path``; raises BpfError(ENOENT) when absent."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _call(OBJ_GET, _ObjPath(_addr(name), 0, 0), f"open pinned {path}")


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32)]


def prog_test_run(fd: int, data: bytes, repeat: int = 1,
                  ctx: bytes | None = None) -> tuple[int, bytes, int]:
    """Run a program on one frame: (return value, frame out, mean ns per run)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 256)
    ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    attr = _TestRun(prog_fd=fd, data_size_in=len(data), data_size_out=len(data_out),
                    data_in=_addr(data_in), data_out=_addr(data_out), repeat=repeat,
                    ctx_size_in=len(ctx) if ctx else 0, ctx_in=_addr(ctx_in))
    _call(PROG_TEST_RUN, attr, "prog test run")
    return attr.retval, data_out.raw[:attr.data_size_out], attr.duration


class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """Attach a program to a device of the calling thread's netns as a BPF link."""
    return _call(LINK_CREATE, _LinkCreate(prog_fd, ifindex, attach_type, 0),
                 f"attach to ifindex {ifindex}")


class _InfoByFd(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class LinkInfo(ctypes.Structure):
    """The head of struct bpf_link_info, with the tcx/xdp member of its union."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("rest", ctypes.c_uint8 * 40)]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("rest", ctypes.c_uint8 * 200)]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("rest", ctypes.c_uint8 * 80)]


def obj_info(fd: int, info: ctypes.Structure) -> ctypes.Structure:
    """Fill ``info`` (LinkInfo, ProgInfo or MapInfo) for the object behind ``fd``."""
    _call(OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(info), _addr(info)), "object info")
    return info


def prog_id(fd: int) -> int:
    return obj_info(fd, ProgInfo()).id


class _LinkFd(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


def link_detach(fd: int) -> None:
    """Detach a link's program now, whoever else holds the link."""
    _call(LINK_DETACH, _LinkFd(fd), "link detach")
