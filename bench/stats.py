"""A run's samples as spreads: medians with min-max over interleaved rounds,
ratios between topologies, the datapath's added cost over the limit (per
round, since rounds are interleaved), and whether a difference exceeds the
spread (the two min-max ranges do not overlap)."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from bench.metrics import METRICS

BASE = "limit"


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        return cls(statistics.median(values), min(values), max(values), len(values)) if values else None

    def apart(self, other: Spread) -> bool:
        """Whether the two differ by more than their spreads: the ranges do not overlap."""
        return self.hi < other.lo or other.hi < self.lo


def _groups(samples: list[dict]) -> dict:
    """(metric, path) -> topology -> samples."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for s in samples:
        out[(s["metric"], s["path"])][s["topology"]].append(s)
    return out


def _field(samples: list[dict], field: str, scale: float = 1) -> list[float]:
    return [s[field] * scale for s in samples if s.get(field) is not None]


def summary(results: dict) -> dict:
    """(metric, path) -> topology -> field -> Spread, for the value and the metric's extras."""
    out: dict = {}
    for (metric, path), by_topo in _groups(results["samples"]).items():
        m = METRICS[metric]
        out[(metric, path)] = {
            topo: {"value": Spread.of(_field(samples, "value", m.scale)),
                   **{f: Spread.of(_field(samples, f)) for f in m.extras}}
            for topo, samples in by_topo.items()}
    return out


def ratio(a: Spread | None, b: Spread | None) -> float | None:
    return a.median / b.median if a and b and b.median else None


def added_cost(results: dict) -> dict:
    """(metric, path) -> topology -> Spread of its CPU per unit minus the limit's,
    round by round (a round measures every topology once, back to back)."""
    out: dict = {}
    for (metric, path), by_topo in _groups(results["samples"]).items():
        cost = METRICS[metric].cost
        if not cost or BASE not in by_topo:
            continue
        base = {s["round"]: s[cost] for s in by_topo[BASE] if s.get(cost) is not None}
        out[(metric, path)] = {
            topo: Spread.of([s[cost] - base[s["round"]] for s in samples
                             if s.get(cost) is not None and s["round"] in base])
            for topo, samples in by_topo.items() if topo != BASE}
    return out


def verdict(a: Spread | None, b: Spread | None, higher_is_better: bool) -> str | None:
    """"better" or "worse" for a against b when they differ beyond the spread, else None."""
    if not (a and b and a.apart(b)):
        return None
    return "better" if (a.median > b.median) == higher_is_better else "worse"
