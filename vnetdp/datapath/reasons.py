"""Verdict reasons and directions, read from ``bpf/lib/reasons.h`` (the one definition)."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from vnetdp.paths import BPF_DIR

_ENTRY = re.compile(r"^\s*VND_(\w+)\s*=\s*(\d+),\s*/\*\s*(.*?)\s*\*/", re.M)
_DROP_MIN = re.compile(r"#define\s+VND_DROP_MIN\s+(\d+)")


@dataclass(frozen=True)
class Reason:
    code: int
    name: str          # e.g. "DROP_SPOOF_IP"
    description: str

    @property
    def is_drop(self) -> bool:
        return self.name.startswith("DROP_")


@functools.cache
def reasons() -> dict[int, Reason]:
    """Every reason by code, parsed from the C header."""
    text = (BPF_DIR / "lib" / "reasons.h").read_text()
    enum = text[text.index("enum vnd_reason"):text.index("};")]
    table = {int(code): Reason(int(code), name, desc) for name, code, desc in _ENTRY.findall(enum)}
    drop_min = int(_DROP_MIN.search(text).group(1))
    bad = [r.name for r in table.values() if r.is_drop != (r.code >= drop_min)]
    if bad:
        raise ValueError(f"reasons.h: codes on the wrong side of VND_DROP_MIN: {bad}")
    return table


def by_name(name: str) -> Reason:
    """The reason called ``name`` (without the VND_ prefix)."""
    for reason in reasons().values():
        if reason.name == name:
            return reason
    raise KeyError(name)


def describe(code: int) -> Reason:
    return reasons().get(code, Reason(code, f"UNKNOWN_{code}", "not in reasons.h"))


DIRECTIONS = {0: "from-pod", 1: "to-pod", 2: "nic"}
