"""The few bpf(2) commands vnetdp needs that bcc does not wrap, via cffi.

Each function takes plain Python values or cffi buffers (map keys and values
are the owning pointers and arrays of ``vnetdp.datapath.layouts``) and raises
:class:`BpfError` (an ``OSError`` carrying errno) on failure. File
descriptors returned are owned by the caller. The syscall number depends on
the architecture; an unknown one is refused when bpf() is first called.
"""
from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator

import cffi

#: bpf(2)'s number in each architecture's syscall table, by ``uname -m``.
BPF_SYSCALL_NUMBERS = {
    "x86_64": 321,
    "aarch64": 280, "arm64": 280,   # asm-generic table
    "riscv64": 280,                 # asm-generic table
    "i386": 357, "i686": 357,
    "s390x": 351,
    "ppc64le": 361,
}

MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
MAP_LOOKUP_BATCH = 24
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
OBJ_GET_INFO_BY_FD = 15
BTF_GET_FD_BY_ID = 19
LINK_CREATE = 28
LINK_DETACH = 34

ATTACH_XDP = 37
LINK_TYPE_XDP = 6
ATTACH_TCX_INGRESS = 46
ATTACH_TCX_EGRESS = 47

BPF_ANY = 0
BPF_EXIST = 2

# The heads of the kernel's union bpf_attr members and info structs that the
# commands below use (include/uapi/linux/bpf.h); pointers travel as u64.
_CDEF = """
long syscall(long number, ...);

struct map_elem { uint32_t map_fd; uint32_t pad; uint64_t key; uint64_t value; uint64_t flags; };
struct map_batch { uint64_t in_batch; uint64_t out_batch; uint64_t keys; uint64_t values;
                   uint32_t count; uint32_t map_fd; uint64_t elem_flags; uint64_t flags; };
struct obj_path { uint64_t pathname; uint32_t bpf_fd; uint32_t file_flags; };
struct test_run { uint32_t prog_fd; uint32_t retval; uint32_t data_size_in; uint32_t data_size_out;
                  uint64_t data_in; uint64_t data_out; uint32_t repeat; uint32_t duration;
                  uint32_t ctx_size_in; uint32_t ctx_size_out; uint64_t ctx_in; uint64_t ctx_out;
                  uint32_t flags; uint32_t cpu; };
struct link_create { uint32_t prog_fd; uint32_t target_ifindex; uint32_t attach_type; uint32_t flags; };
struct info_by_fd { uint32_t bpf_fd; uint32_t info_len; uint64_t info; };
struct by_id { uint32_t id; uint32_t next_id; uint32_t open_flags; };
struct link_fd { uint32_t link_fd; };

/* Zero-filled room for union bpf_attr; a command fills its own member. */
union bpf_attr {
    struct map_elem elem; struct map_batch batch; struct obj_path obj; struct test_run test;
    struct link_create link; struct info_by_fd info; struct by_id by_id; struct link_fd link_fd;
    uint8_t raw[160];
};

/* The head of struct bpf_link_info, with the tcx/xdp member of its union. */
struct link_info { uint32_t type; uint32_t id; uint32_t prog_id; uint32_t pad;
                   uint32_t ifindex; uint32_t attach_type; uint8_t rest[40]; };
struct prog_info { uint32_t type; uint32_t id; uint8_t tag[8]; uint8_t rest[200]; };
struct map_info { uint32_t type; uint32_t id; uint32_t key_size; uint32_t value_size;
                  uint32_t max_entries; uint32_t map_flags; char name[16]; uint32_t ifindex;
                  uint32_t btf_vmlinux_value_type_id; uint64_t netns_dev; uint64_t netns_ino;
                  uint32_t btf_id; uint32_t btf_key_type_id; uint32_t btf_value_type_id;
                  uint8_t rest[36]; };
struct btf_info { uint64_t btf; uint32_t btf_size; uint32_t id; uint64_t name; uint32_t name_len;
                  uint32_t kernel_btf; };
"""


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` tells why."""


class UnknownArchitecture(BpfError):
    """No bpf(2) syscall number is known for this machine's architecture."""


def bpf_syscall_number(machine: str) -> int:
    """bpf(2)'s syscall number on ``machine`` (as ``uname -m`` names it)."""
    try:
        return BPF_SYSCALL_NUMBERS[machine]
    except KeyError:
        raise UnknownArchitecture(
            errno.ENOSYS, f"bpf(): no syscall number known for architecture {machine!r} "
            f"(known: {', '.join(sorted(BPF_SYSCALL_NUMBERS))})") from None


@functools.cache
def _ffi() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi


@functools.cache
def _libc():
    return _ffi().dlopen(None)


def _attr(**member):
    """A zeroed union bpf_attr with one member set, e.g. ``_attr(elem={...})``."""
    return _ffi().new("union bpf_attr *", member)


def _call(cmd: int, attr, what: str) -> int:
    """Run one bpf() command on ``attr``, which the kernel may write back into
    (on failure too: a batch lookup ending in ENOENT reports its count)."""
    ffi = _ffi()
    nr = bpf_syscall_number(os.uname().machine)
    ret = _libc().syscall(ffi.cast("long", nr), ffi.cast("int", cmd), ffi.cast("void *", attr),
                          ffi.cast("unsigned int", ffi.sizeof("union bpf_attr")))
    err = ffi.errno
    if ret < 0:
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _addr(buf) -> int:
    """The address of a cffi buffer (any FFI's), 0 for None."""
    return int(_ffi().cast("uintptr_t", buf)) if buf is not None else 0


def _found(cmd: int, attr, what: str) -> bool:
    """Run a map command; False where the kernel answers ENOENT (no such entry)."""
    try:
        _call(cmd, attr, what)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def _elem(fd: int, key, value=None, flags: int = 0):
    return _attr(elem={"map_fd": fd, "key": _addr(key), "value": _addr(value), "flags": flags})


def map_lookup(fd: int, key, value) -> bool:
    """Fill the buffer ``value`` with the entry for ``key``; False when there is none."""
    return _found(MAP_LOOKUP_ELEM, _elem(fd, key, value), "map lookup")


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _call(MAP_UPDATE_ELEM, _elem(fd, key, value, flags), "map update")


def map_delete(fd: int, key) -> bool:
    """Delete ``key``; False when it was not there."""
    return _found(MAP_DELETE_ELEM, _elem(fd, key), "map delete")


def map_next_key(fd: int, key, next_key) -> bool:
    """Write the key after ``key`` (the first one if ``key`` is None); False at the end."""
    return _found(MAP_GET_NEXT_KEY, _elem(fd, key, next_key), "map next key")


def map_lookup_batch(fd: int, keys, values) -> Iterator[int]:
    """Read a hash map into the cffi arrays ``keys`` and ``values``, as many
    entries per bpf() call as they hold: each step fills their first n
    elements and yields n. The next step overwrites them."""
    ffi = _ffi()
    chunk = len(keys)
    # The batch cursor is opaque; a key's size is always room enough.
    room = max(8, ffi.sizeof(keys) // chunk)
    cursor_in, cursor_out = ffi.new("uint8_t[]", room), ffi.new("uint8_t[]", room)
    first = True
    while True:
        attr = _attr(batch={"in_batch": 0 if first else _addr(cursor_in), "out_batch": _addr(cursor_out),
                            "keys": _addr(keys), "values": _addr(values), "count": chunk, "map_fd": fd})
        done = not _found(MAP_LOOKUP_BATCH, attr, "map lookup batch")
        yield attr.batch.count
        if done:
            return
        ffi.memmove(cursor_in, cursor_out, room)
        first = False


def _path_attr(path: str, fd: int = 0):
    name = _ffi().new("char[]", os.fsencode(path))
    return _attr(obj={"pathname": _addr(name), "bpf_fd": fd}), name


def obj_pin(fd: int, path: str) -> None:
    """Pin a program, map or link at ``path`` in a bpffs."""
    attr, _name = _path_attr(path, fd)
    _call(OBJ_PIN, attr, f"pin {path}")


def obj_get(path: str) -> int:
    """Open the object pinned at ``path``; raises BpfError(ENOENT) when absent."""
    attr, _name = _path_attr(path)
    return _call(OBJ_GET, attr, f"open pinned {path}")


def prog_test_run(fd: int, data: bytes, repeat: int = 1, ctx: bytes | None = None,
                  ctx_out: bytearray | None = None) -> tuple[int, bytes, int]:
    """Run a program on one frame: (return value, frame out, mean ns per run).
    ``ctx`` is the context it starts with (a tc program's struct __sk_buff,
    the fields the kernel takes), ``ctx_out`` a buffer that receives the
    context it ends with."""
    ffi = _ffi()
    data_in = ffi.new("char[]", data)
    data_out = ffi.new("char[]", len(data) + 256)
    ctx_in = ffi.new("char[]", ctx) if ctx else None
    ctx_buf = ffi.from_buffer(ctx_out) if ctx_out is not None else None
    attr = _attr(test={"prog_fd": fd, "data_size_in": len(data), "data_size_out": len(data_out),
                       "data_in": _addr(data_in), "data_out": _addr(data_out), "repeat": repeat,
                       "ctx_size_in": len(ctx) if ctx else 0, "ctx_in": _addr(ctx_in),
                       "ctx_size_out": len(ctx_out) if ctx_out is not None else 0,
                       "ctx_out": _addr(ctx_buf)})
    _call(PROG_TEST_RUN, attr, "prog test run")
    t = attr.test
    return t.retval, ffi.buffer(data_out, t.data_size_out)[:], t.duration


def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """Attach a program to a device of the calling thread's netns as a BPF link."""
    attr = _attr(link={"prog_fd": prog_fd, "target_ifindex": ifindex, "attach_type": attach_type})
    return _call(LINK_CREATE, attr, f"attach to ifindex {ifindex}")


# Named like types: callers write ``obj_info(fd, LinkInfo())``.
def LinkInfo():  # noqa: N802
    """The head of struct bpf_link_info (type, id, prog_id, ifindex, attach_type)."""
    return _ffi().new("struct link_info *")


def ProgInfo():  # noqa: N802
    """The head of struct bpf_prog_info (type, id, tag)."""
    return _ffi().new("struct prog_info *")


def MapInfo():  # noqa: N802
    """The head of struct bpf_map_info (type, id, key and value sizes, BTF ids...)."""
    return _ffi().new("struct map_info *")


def BtfInfo():  # noqa: N802
    """struct bpf_btf_info: ``btf`` and ``btf_size`` say where the BTF goes."""
    return _ffi().new("struct btf_info *")


def parse_types() -> None:
    """Have cffi parse, now, the types that calls allocate (it parses each on
    its first use, ~1 ms): the agent does, before it forks workers."""
    for make in (LinkInfo, ProgInfo, MapInfo, BtfInfo, _attr):
        make()
    for buffer in ("char[]", "uint8_t[]"):
        _ffi().typeof(buffer)


def obj_info(fd: int, info):
    """Fill ``info`` (LinkInfo, ProgInfo, MapInfo or BtfInfo) for the object behind ``fd``."""
    attr = _attr(info={"bpf_fd": fd, "info_len": _ffi().sizeof(info[0]), "info": _addr(info)})
    _call(OBJ_GET_INFO_BY_FD, attr, "object info")
    return info


def prog_id(fd: int) -> int:
    return obj_info(fd, ProgInfo()).id


def btf_data(btf_id: int) -> bytes:
    """The raw BTF (header, types, strings) of the loaded BTF object ``btf_id``."""
    fd = _call(BTF_GET_FD_BY_ID, _attr(by_id={"id": btf_id}), f"open BTF {btf_id}")
    try:
        size = obj_info(fd, BtfInfo()).btf_size
        buf = _ffi().new("uint8_t[]", size)
        info = BtfInfo()
        info.btf, info.btf_size = _addr(buf), size
        obj_info(fd, info)
        return _ffi().buffer(buf)[:]
    finally:
        os.close(fd)


def link_detach(fd: int) -> None:
    """Detach a link's program now, whoever else holds the link."""
    _call(LINK_DETACH, _attr(link_fd={"link_fd": fd}), "link detach")


# --- BPF_LINK_UPDATE: swap the program of a live link ------------------------------
# union bpf_attr's link_update member: link_fd, new_prog_fd, flags, old_prog_fd
# (old_prog_fd only with BPF_F_REPLACE: the update then happens only while that
# program is the link's). tcx and XDP links implement it by swapping one RCU
# pointer, so no packet meets an empty hook.
LINK_UPDATE = 29
BPF_F_REPLACE = 1 << 2
_LINK_UPDATE_CDEF = """
struct link_update { uint32_t link_fd; uint32_t new_prog_fd; uint32_t flags; uint32_t old_prog_fd; };
"""


@functools.cache
def _link_update_ffi() -> cffi.FFI:
    """The shared FFI, taught the link_update member's layout (once)."""
    ffi = _ffi()
    ffi.cdef(_LINK_UPDATE_CDEF)
    return ffi


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Make the link at ``link_fd`` run ``new_prog_fd`` from now on; with
    ``old_prog_fd``, only if that program is still the link's (else EPERM)."""
    ffi = _link_update_ffi()
    attr = _attr()
    member = ffi.cast("struct link_update *", attr)
    member.link_fd, member.new_prog_fd = link_fd, new_prog_fd
    if old_prog_fd is not None:
        member.flags, member.old_prog_fd = BPF_F_REPLACE, old_prog_fd
    _call(LINK_UPDATE, attr, f"update link {link_fd}")
