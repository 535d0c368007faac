"""Map layout versions: what the pinned maps hold, against what a build expects.

A map's *layout* is the shape of its key and of its value: sizes, and for
structs every member's name, bit offset and shape, recursively (type names
and comments do not count). A *layout version* is a short hash of the layouts
of a set of maps.

- A build's layouts come from ``bpf/lib/maps.h``: the ``BPF_TABLE_PINNED``
  declarations say which key and value type each pinned map has, the layouts
  section defines the types (read with cffi, as ``layouts`` reads it).
- The pinned maps' layouts come from the maps themselves: the compiler
  emitted BTF for each map's key and value, and the kernel keeps it with the
  map for as long as the map is pinned. The version is therefore stored with
  the maps, by construction: it can neither go stale nor be forgotten, and a
  node pinned before versions existed has one too (a map without BTF is
  compared by its key and value sizes).

A build may run on pinned maps when every map that both declare has the same
layout; maps the build adds are created when it loads, maps it no longer
declares are left alone. Anything else is refused, naming both versions and
the maps that differ: the programs would misread the maps (or the verifier
would refuse them with a message about offsets). Migrating a changed map is
not done here.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cffi

from vnetdp.datapath import layouts, syscall

#: BPF_TABLE_PINNED("type", key, value, c_name, max_entries, VND_MAPS_DIR "/pin", ...)
_DECLARATION = re.compile(
    r'BPF_TABLE_PINNED\(\s*"(?P<kind>\w+)"\s*,\s*(?P<key>[^,]+?)\s*,\s*(?P<value>[^,]+?)\s*,'
    r'\s*(?P<name>\w+)\s*,[^;]*?VND_MAPS_DIR\s*"/(?P<pin>\w+)"', re.S)

Shape = list  # JSON-able: ["int", size] | ["array", count, shape] | ["struct"|"union", size, [members]]


class LayoutMismatch(Exception):
    """A build's map layouts differ from the pinned maps' (both versions named)."""

    def __init__(self, message: str, comparison: Comparison) -> None:
        super().__init__(message)
        self.comparison = comparison


# --- the build's side: maps.h through cffi ---------------------------------------

def defines(cflags: Iterable[str]) -> set[str]:
    """The macro names ``cflags`` define (``-DNAME``, ``-DNAME=VALUE``)."""
    return {f[2:].partition("=")[0] for f in cflags if f.startswith("-D")}


def _active(text: str, defined: set[str]) -> str:
    """``text`` without the lines that ``#ifdef``/``#ifndef`` blocks exclude
    for ``defined`` (other ``#if``s count as true: maps.h declares maps
    conditionally only with ``#ifdef``)."""
    kept, stack = [], []
    for line in text.splitlines():
        words = line.split()
        directive = words[0] if words else ""
        if directive in ("#ifdef", "#ifndef") and len(words) > 1:
            stack.append((words[1] in defined) == (directive == "#ifdef"))
        elif directive.startswith("#if"):
            stack.append(True)
        elif directive == "#else" and stack:
            stack[-1] = not stack[-1]
        elif directive == "#endif" and stack:
            stack.pop()
        elif all(stack):
            kept.append(line)
    return "\n".join(kept)


def declared_maps(text: str, cflags: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Pin name -> (key C type, value C type) of every pinned map ``text``
    declares for a build with ``cflags``."""
    return {m["pin"]: (m["key"].strip(), m["value"].strip())
            for m in _DECLARATION.finditer(_active(text, defines(cflags)))}


def cffi_shape(ffi: cffi.FFI, ctype) -> Shape:
    t = ffi.typeof(ctype) if isinstance(ctype, str) else ctype
    if t.kind == "array":
        return ["array", t.length, cffi_shape(ffi, t.item)]
    if t.kind in ("struct", "union"):
        members = []
        for name, f in t.fields or ():
            bits = f.bitsize if f.bitsize >= 0 else 0
            offset = f.offset * 8 + (f.bitshift if f.bitsize >= 0 else 0)
            members.append([name, offset, bits, cffi_shape(ffi, f.type)])
        return [t.kind, ffi.sizeof(t), members]
    return ["int", ffi.sizeof(t)]  # primitives, enums, pointers: only their size matters


def build_layouts(cflags: Iterable[str] = (), maps_h: Path = layouts.MAPS_H) -> dict[str, list[Shape]]:
    """Pin name -> [key shape, value shape] as a build of ``maps_h`` with ``cflags`` declares them."""
    ffi = layouts.parse(maps_h)
    return {pin: [cffi_shape(ffi, key), cffi_shape(ffi, value)]
            for pin, (key, value) in declared_maps(maps_h.read_text(), cflags).items()}


# --- the pinned side: the maps' BTF -----------------------------------------------

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FLOAT, _TYPE_TAG, _ENUM64 = 9, 10, 11, 16, 18, 19
_REFERENCES = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
# Bytes after a type's 12-byte common part: fixed per kind, and per vlen entry.
_FIXED = {_INT: 4, _ARRAY: 12, 14: 4, 17: 4}
_PER_ENTRY = {_STRUCT: 12, _UNION: 12, _ENUM: 8, 13: 8, 15: 12, _ENUM64: 12}


@dataclass
class _BtfType:
    kind: int
    name_off: int
    size_or_type: int
    kind_flag: bool
    members: list[tuple[int, int, int]] = field(default_factory=list)  # name_off, type id, offset
    array: tuple[int, int] = (0, 0)                                    # element type id, count


class Btf:
    """The types of a raw BTF blob (header, types, strings), by type id."""

    def __init__(self, raw: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", raw)
        if magic != 0xEB9F:
            raise ValueError("not little-endian BTF")
        self.strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]
        self.types: list[_BtfType | None] = [None]  # id 0 is void
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", raw, pos)
            kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
            t = _BtfType(kind, name_off, size_or_type, bool(info >> 31))
            if kind in (_STRUCT, _UNION):
                t.members = [struct.unpack_from("<III", raw, pos + 12 + 12 * i) for i in range(vlen)]
            elif kind == _ARRAY:
                elem, _index, count = struct.unpack_from("<III", raw, pos + 12)
                t.array = (elem, count)
            self.types.append(t)
            pos += 12 + _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def name(self, off: int) -> str:
        return self.strings[off:self.strings.index(b"\0", off)].decode()

    def size(self, tid: int) -> int:
        t = self.types[tid]
        if t.kind in _REFERENCES:
            return self.size(t.size_or_type)
        if t.kind == _ARRAY:
            return self.size(t.array[0]) * t.array[1]
        if t.kind == _PTR:
            return 8
        return t.size_or_type

    def shape(self, tid: int) -> Shape:
        t = self.types[tid]
        if t.kind in _REFERENCES:
            return self.shape(t.size_or_type)
        if t.kind == _ARRAY:
            return ["array", t.array[1], self.shape(t.array[0])]
        if t.kind in (_STRUCT, _UNION):
            members = []
            for name_off, mtype, offset in t.members:
                bits, offset = (offset >> 24, offset & 0xFFFFFF) if t.kind_flag else (0, offset)
                members.append([self.name(name_off), offset, bits, self.shape(mtype)])
            return ["struct" if t.kind == _STRUCT else "union", t.size_or_type, members]
        return ["int", self.size(tid)]


def pinned_layouts(maps_dir: str) -> dict[str, list[Shape]]:
    """Pin name -> [key shape, value shape] of every map pinned in ``maps_dir``
    (from its BTF; ["sizes", key size, value size] for a map without BTF)."""
    found: dict[str, list[Shape]] = {}
    blobs: dict[int, Btf] = {}
    try:
        names = sorted(os.listdir(maps_dir))
    except FileNotFoundError:
        return found
    for name in names:
        try:
            fd = syscall.obj_get(os.path.join(maps_dir, name))
        except syscall.BpfError:
            continue
        try:
            info = syscall.obj_info(fd, syscall.MapInfo())
        except syscall.BpfError:  # a pinned program or link, not a map
            continue
        finally:
            os.close(fd)
        if info.btf_id and info.btf_value_type_id:
            if info.btf_id not in blobs:
                blobs[info.btf_id] = Btf(syscall.btf_data(info.btf_id))
            btf = blobs[info.btf_id]
            key = btf.shape(info.btf_key_type_id) if info.btf_key_type_id else ["int", info.key_size]
            found[name] = [key, btf.shape(info.btf_value_type_id)]
        else:
            found[name] = [["sizes", info.key_size, info.value_size]]
    return found


# --- versions and comparison -------------------------------------------------------

def version(maps: dict[str, list[Shape]]) -> str:
    """The layout version of a set of map layouts: 12 hex digits, "none" for no maps."""
    if not maps:
        return "none"
    return hashlib.sha256(json.dumps(maps, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def _sizes(shape: list[Shape]) -> tuple[int, int]:
    def size(s: Shape) -> int:
        return s[1] if s[0] in ("int", "struct", "union") else s[1] * size(s[2])
    return size(shape[0]), size(shape[1])


def _same(build: list[Shape], pinned: list[Shape]) -> bool:
    if pinned and pinned[0][0] == "sizes":  # no BTF: sizes are all there is to compare
        return _sizes(build) == (pinned[0][1], pinned[0][2])
    return build == pinned


def _describe(build: list[Shape], pinned: list[Shape]) -> str:
    (bk, bv), (pk, pv) = _sizes(build), (_sizes(pinned) if pinned[0][0] != "sizes" else pinned[0][1:])
    if (bk, bv) != (pk, pv):
        return f"key/value {pk}/{pv} bytes pinned, {bk}/{bv} in the build"
    return "same sizes, members differ (order, names or offsets)"


@dataclass(frozen=True)
class Comparison:
    build_version: str
    pinned_version: str
    changed: dict[str, str]    # map -> how its layout differs
    added: list[str]           # maps the build declares and nothing has pinned yet (created on load)
    unused: list[str]          # pinned maps the build does not declare (left alone)

    @property
    def compatible(self) -> bool:
        return not self.changed

    def as_dict(self) -> dict:
        return {"build": self.build_version, "pinned": self.pinned_version, "compatible": self.compatible,
                "changed": self.changed, "added": self.added, "unused": self.unused}


def compare(maps_dir: str, build: dict[str, list[Shape]] | None = None) -> Comparison:
    """The build's layouts (default: the sources' maps.h, no flags) against the maps pinned in ``maps_dir``."""
    build = build_layouts() if build is None else build
    pinned = pinned_layouts(maps_dir)
    both = sorted(build.keys() & pinned.keys())
    changed = {m: _describe(build[m], pinned[m]) for m in both if not _same(build[m], pinned[m])}
    return Comparison(version(build), version(pinned), changed,
                      sorted(build.keys() - pinned.keys()), sorted(pinned.keys() - build.keys()))


def check(maps_dir: str, build: dict[str, list[Shape]] | None = None, what: str = "this build") -> Comparison:
    """``compare``, raising LayoutMismatch when the build would misread a pinned map."""
    c = compare(maps_dir, build)
    if not c.compatible:
        raise LayoutMismatch(
            f"{what} has map layout version {c.build_version}, the maps pinned in {maps_dir} have "
            f"{c.pinned_version}: " + "; ".join(f"{m}: {why}" for m, why in c.changed.items()) +
            ". Refused: the programs would misread those maps (migrating them is not supported; on a node "
            "with no pods, remove the maps directory and run vnetdp install)", c)
    return c
