"""Compile the C programs with bcc once per node, pin them, and reuse the pins.

A *build* is identified by a hash of every file under ``bpf/`` and of the
compile flags. ``load`` compiles only when the current build is not
pinned yet; later calls (every CNI ADD) just open the pins. Maps are declared
with ``BPF_TABLE_PINNED``, so a new build picks up the existing maps and their
contents: upgrading programs keeps endpoints and counters.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from collections.abc import Iterable
from dataclasses import dataclass, field

from vnetdp.datapath import syscall
from vnetdp.datapath.bpffs import Bpffs, remove_pin
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
    """The programs and maps of one node, pinned under ``bpffs``."""

    bpffs: Bpffs
    lock_dir: str
    cflags: tuple[str, ...] = ()
    build: str = field(init=False)

    def __post_init__(self) -> None:
        self.build = build_id(self.cflags)

    def prog_pin(self, name: str) -> str:
        return os.path.join(self.bpffs.progs_dir(self.build), name)

    def is_loaded(self) -> bool:
        return all(os.path.exists(self.prog_pin(n)) for n in PROGRAMS)

    def load(self) -> LoadResult:
        """Pinned programs of the current build, compiling them if needed."""
        start = time.perf_counter()
        if self.is_loaded():
            return LoadResult(self.build, False, time.perf_counter() - start)
        with flocked(os.path.join(self.lock_dir, "compile.lock")):
            compiled = not self.is_loaded()  # another process may have won the race
            if compiled:
                self._compile_and_pin()
        return LoadResult(self.build, compiled, time.perf_counter() - start)

    def _compile_and_pin(self) -> None:
        from bcc import BPF  # imported here: reusing pins must not pay for bcc

        self.bpffs.make_dirs()
        progs_dir = self.bpffs.progs_dir(self.build)
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
                    tmp = self.prog_pin(name) + "~new"
                    remove_pin(tmp)
                    syscall.obj_pin(fn.fd, tmp)
                    os.rename(tmp, self.prog_pin(name))
            finally:
                bpf.cleanup()
        self._unpin_old_builds()

    def _unpin_old_builds(self) -> None:
        """Drop pins of other builds; their programs live on while still attached."""
        for build in self.bpffs.builds():
            if build != self.build:
                d = self.bpffs.progs_dir(build)
                for name in os.listdir(d):
                    remove_pin(os.path.join(d, name))
                os.rmdir(d)

    def prog_fd(self, name: str) -> int:
        """An fd for a pinned program of this build (caller closes it)."""
        return syscall.obj_get(self.prog_pin(name))
