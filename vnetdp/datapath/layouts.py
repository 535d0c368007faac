"""The map layouts of the datapath, read from ``bpf/lib/maps.h`` with cffi.

Every struct, enum and integer ``#define`` that the programs share with the
control plane sits in one section of maps.h, between the marker lines
``/* vnd:layouts begin */`` and ``/* vnd:layouts end */``. That section is
plain C which bcc compiles into the programs and which cffi's ``cdef``
parses here (once per process), so it is the only definition of any map key
or value: Python builds them with ``new("struct vnd_endpoint", ...)`` and
reads the constants with ``constants()``. Nothing is compiled here: cffi
lays the structs out by the C rules, and the tests compare its layouts with
the BTF that the compiler emitted for the pinned maps.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import cffi

from vnetdp.paths import BPF_DIR

MAPS_H = BPF_DIR / "lib" / "maps.h"
BEGIN, END = "/* vnd:layouts begin */", "/* vnd:layouts end */"

# The kernel's fixed-width types, which maps.h gets from linux/types.h.
PRELUDE = """\
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
typedef uint16_t __be16; typedef uint32_t __be32;
"""


class LayoutError(Exception):
    """The layouts section is missing or not C that cffi accepts, a type is not
    declared in it, or a pinned map does not have the layout declared for it."""


def section(text: str, where: str) -> tuple[int, str]:
    """(line number of its first line, source) of the layouts section of ``text``."""
    lines = text.splitlines(keepends=True)
    marks = {mark: [i for i, line in enumerate(lines) if line.strip() == mark] for mark in (BEGIN, END)}
    if len(marks[BEGIN]) != 1 or len(marks[END]) != 1 or marks[BEGIN][0] > marks[END][0]:
        raise LayoutError(f"{where}: want one line {BEGIN!r} and, after it, one line {END!r}")
    first, last = marks[BEGIN][0] + 1, marks[END][0]
    return first + 1, "".join(lines[first:last])


def parse(path: Path) -> cffi.FFI:
    """A new FFI that knows every type and constant of the layouts section of ``path``."""
    line, source = section(path.read_text(), str(path))
    f = cffi.FFI()
    try:
        # The #line directive makes cffi's messages name the header and its lines.
        f.cdef(f'{PRELUDE}# {line} "{path}"\n{source}')
    except (cffi.CDefError, cffi.FFIError) as e:
        raise LayoutError(f"{path}: the layouts section is not C that cffi's cdef accepts: {e}") from e
    return f


@functools.cache
def ffi() -> cffi.FFI:
    """The FFI of maps.h's layouts section, parsed once per process."""
    return parse(MAPS_H)


@functools.cache
def pointer_type(ctype: str) -> cffi.FFI.CType:
    """The cffi type ``ctype *``; LayoutError when the section does not declare ``ctype``."""
    f = ffi()
    try:
        f.sizeof(ctype)
    except (cffi.CDefError, cffi.FFIError, ValueError) as e:
        raise LayoutError(f"{ctype!r} is not declared in the layouts section of {MAPS_H}") from e
    return f.typeof(f"{ctype} *")


def sizeof(ctype: str) -> int:
    """The size of ``ctype``; LayoutError when the section does not declare it."""
    return ffi().sizeof(pointer_type(ctype).item)


def is_integer(ctype: str) -> bool:
    """Whether ``ctype`` is an integer type (cffi reads and writes those as ints)."""
    return pointer_type(ctype).item.kind == "primitive"


def new(ctype: str, init=None):
    """An owning cffi pointer to a new ``ctype``: zeroed, or set from ``init``
    (an int for an integer type; a dict, list or struct for a struct)."""
    return ffi().new(pointer_type(ctype), init)


@functools.cache
def constants() -> dict[str, int]:
    """Every ``#define`` and enum constant of the layouts section, by C name."""
    # cffi reads constants through a library object: the process's own symbols
    # serve (nothing is looked up in them, the section declares no functions).
    lib = ffi().dlopen(None)
    return {name: getattr(lib, name) for name in dir(lib)}


def enum(name: str) -> dict[str, int]:
    """The constants of ``enum name``, by C name, in value order."""
    with warnings.catch_warnings():  # cffi guesses at an undeclared enum, with a warning
        warnings.simplefilter("ignore")
        elements = ffi().typeof(f"enum {name}").elements
    if not elements:
        raise LayoutError(f"enum {name} is not declared in the layouts section of {MAPS_H}")
    return {elements[value]: value for value in sorted(elements)}
