"""Compile the C programs with bcc once per node, pin them, and reuse the pins.

A *build* is identified by a hash of every file under ``bpf/`` and of the
compile flags. ``load`` compiles only when the node has no build yet; later
calls (every CNI ADD) just open the pins of the build the ``current`` marker
names. Maps are declared with ``BPF_TABLE_PINNED``, so a new build picks up
the existing maps and their contents: upgrading programs keeps endpoints and
counters. A build whose map layouts differ from the pinned maps' is refused
before it is compiled (``layout_version``). ``vnetdp upgrade`` pins a new
build beside the running one (``compile``), moves the markers, then swaps
every attachment in place (``vnetdp.ops.upgrade``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from pathlib import Path
from collections.abc import Iterable
from dataclasses import dataclass, field

from vnetdp.datapath import layout_version, syscall
from vnetdp.datapath.bpffs import CURRENT, PREVIOUS, Bpffs, remove_pin
from vnetdp.locks import flocked
from vnetdp.paths import BPF_DIR

#: program name -> (source file, program type: "tc" or "xdp")
PROGRAMS: dict[str, tuple[str, str]] = {
    "from_container": ("from_container.c", "tc"),
    "to_container": ("to_container.c", "tc"),
    "from_nic": ("from_nic.c", "tc"),
    "from_nic_xdp": ("from_nic.c", "xdp"),
    "pod_xdp_pass": ("from_nic.c", "xdp"),
}


class CompileError(Exception):
    """bcc could not compile or load a program."""


class IncompatibleLayout(CompileError):
    """A build's map layouts differ from the pinned maps' (the message names
    both layout versions and the maps): it is refused before bcc runs."""

    def __init__(self, message: str, comparison: layout_version.Comparison) -> None:
        super().__init__(message)
        self.comparison = comparison


_LOCAL_INCLUDE = re.compile(r'^#include\s+"([^"]+)"\s*$', re.M)


def expand_includes(path: Path, seen: set[Path] | None = None) -> str:
    """The source with its quoted ``#include``s inlined, each file once.

    bcc rewrites map method calls (``map.lookup(&k)``) only in the main file,
    so the programs' own headers are inlined into it; ``#line`` markers keep
    compiler messages pointing at the real file and line.
    """
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out, last = [], 0
    text = path.read_text()
    for m in _LOCAL_INCLUDE.finditer(text):
        out.append(text[last:m.start()])
        out.append(expand_includes(path.parent / m.group(1), seen))
        line = text.count("\n", 0, m.end()) + 2
        out.append(f'#line {line} "{path}"\n')
        last = m.end() + 1
    out.append(text[last:])
    return f'#line 1 "{path}"\n' + "".join(out)


def build_id(cflags: Iterable[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(BPF_DIR.rglob("*.[ch]")):
        h.update(str(path.relative_to(BPF_DIR)).encode())
        h.update(path.read_bytes())
    h.update("\0".join(cflags).encode())
    return h.hexdigest()[:12]


@dataclass
class LoadResult:
    build: str
    compiled: bool
    seconds: float


@dataclass
class Programs:
    """The programs and maps of one node, pinned under ``bpffs``.

    ``build`` is the build the node runs: the one the ``current`` marker names
    (``<bpffs>/progs/current``, set by the first load and by ``vnetdp upgrade``),
    or, before anything is marked, the build of the sources on disk with
    ``cflags`` (``source_build``). Endpoints and the NIC always get the marked
    build, so an upgrade or a rollback holds until the next one, whatever the
    sources on disk say; finding it costs one readlink.
    """

    bpffs: Bpffs
    lock_dir: str
    cflags: tuple[str, ...] = ()
    build: str = field(init=False)

    def __post_init__(self) -> None:
        self.refresh()

    @functools.cached_property
    def source_build(self) -> str:
        """The build of the sources on disk with ``cflags`` (hashes ``bpf/``)."""
        return build_id(self.cflags)

    def refresh(self) -> str:
        """Re-read the marker (an upgrade may have moved it); the build to use."""
        self.build = self.bpffs.marker(CURRENT) or self.source_build
        return self.build

    def prog_pin(self, name: str, build: str | None = None) -> str:
        return os.path.join(self.bpffs.progs_dir(build or self.build), name)

    def is_pinned(self, build: str) -> bool:
        return all(os.path.exists(self.prog_pin(n, build)) for n in PROGRAMS)

    def is_loaded(self) -> bool:
        return self.is_pinned(self.build)

    def load(self) -> LoadResult:
        """Pinned programs of the current build; on a node that has none marked
        (its first load), the sources' build, compiled if needed, becomes the
        current one."""
        start = time.perf_counter()
        current = self.bpffs.marker(CURRENT)
        if current and self.is_pinned(current):
            self.build = current
            return LoadResult(current, False, time.perf_counter() - start)
        with flocked(os.path.join(self.lock_dir, "compile.lock")):
            current = self.bpffs.marker(CURRENT)
            if current and self.is_pinned(current):  # another process won the race
                self.build = current
                return LoadResult(current, False, time.perf_counter() - start)
            self.build = self.source_build
            compiled = not self.is_pinned(self.build)
            if compiled:
                self._compile_and_pin(self.build)
            others = [b for b in self.bpffs.builds() if b != self.build and self.is_pinned(b)]
            if self.bpffs.marker(PREVIOUS) is None and len(others) == 1:
                self.bpffs.set_marker(PREVIOUS, others[0])  # pins from before markers: keep for a rollback
            self.bpffs.set_marker(CURRENT, self.build)
            self.prune()
        return LoadResult(self.build, compiled, time.perf_counter() - start)

    def compile(self) -> LoadResult:
        """Pin the sources' build (``source_build``) beside the running one,
        compiling it unless pinned: the first half of an upgrade. Moves no
        marker and unpins nothing. IncompatibleLayout when its map layouts
        differ from the pinned maps'."""
        start = time.perf_counter()
        build = self.source_build
        compiled = False
        if not self.is_pinned(build):
            with flocked(os.path.join(self.lock_dir, "compile.lock")):
                compiled = not self.is_pinned(build)
                if compiled:
                    self._compile_and_pin(build)
        return LoadResult(build, compiled, time.perf_counter() - start)

    def check_layouts(self) -> layout_version.Comparison:
        """The sources' map layouts (with ``cflags``) against the pinned maps';
        IncompatibleLayout when a program of this build would misread one."""
        try:
            return layout_version.check(self.bpffs.maps_dir, layout_version.build_layouts(self.cflags),
                                        what=f"build {self.source_build}")
        except layout_version.LayoutMismatch as e:
            raise IncompatibleLayout(str(e), e.comparison) from None

    def _compile_and_pin(self, build: str) -> None:
        from bcc import BPF  # imported here: reusing pins must not pay for bcc

        self.bpffs.make_dirs()
        self.check_layouts()  # before bcc opens the pinned maps
        progs_dir = self.bpffs.progs_dir(build)
        os.makedirs(progs_dir, exist_ok=True)
        flags = [f'-DVND_MAPS_DIR="{self.bpffs.maps_dir}"', *self.cflags]
        by_source: dict[str, list[tuple[str, str]]] = {}
        for name, (source, kind) in PROGRAMS.items():
            by_source.setdefault(source, []).append((name, kind))
        for source, progs in by_source.items():
            try:
                bpf = BPF(text=expand_includes(BPF_DIR / source).encode(), cflags=flags)
            except Exception as e:
                raise CompileError(f"compiling {source}: {e}") from e
            try:
                for name, kind in progs:
                    fn = bpf.load_func(name.encode(), BPF.SCHED_CLS if kind == "tc" else BPF.XDP)
                    tmp = self.prog_pin(name, build) + "~new"
                    remove_pin(tmp)
                    syscall.obj_pin(fn.fd, tmp)
                    os.rename(tmp, self.prog_pin(name, build))
            finally:
                bpf.cleanup()

    def prune(self) -> list[str]:
        """Unpin every build but the current and the previous one (their
        programs live on while still attached); the builds unpinned."""
        keep = {self.bpffs.marker(CURRENT), self.bpffs.marker(PREVIOUS), self.build}
        gone = []
        for build in self.bpffs.builds():
            if build not in keep:
                d = self.bpffs.progs_dir(build)
                for name in os.listdir(d):
                    remove_pin(os.path.join(d, name))
                os.rmdir(d)
                gone.append(build)
        return gone

    def prog_fd(self, name: str, build: str | None = None) -> int:
        """An fd for a pinned program of this build (or ``build``; caller closes it)."""
        return syscall.obj_get(self.prog_pin(name, build))

    def prog_ids(self, build: str | None = None) -> dict[str, int]:
        """Program name -> kernel program id of a pinned build (missing pins left out)."""
        ids = {}
        for name in PROGRAMS:
            try:
                fd = self.prog_fd(name, build)
            except syscall.BpfError:
                continue
            try:
                ids[name] = syscall.prog_id(fd)
            finally:
                os.close(fd)
        return ids
