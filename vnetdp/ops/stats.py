"""Datapath counters per endpoint and reason (``vnetdp stats``), and rates
between two samples (``--watch``).

A sample::

    {"time": 1700000000.25,
     "endpoints": [{"kind": "pod", "interface": "vnd1a2b3c4d5e6", "ifindex": 7, "container_id": "...",
                    "namespace": "default", "pod": "web-0", "address": "10.3.0.5", "owner": "cni",
                    "counters": [{"direction": "to-pod", "reason": "FWD_TO_POD", "drop": false,
                                  "packets": 1000, "bytes": 98000}, ...]}, ...]}

``kind`` is ``pod``, ``nic`` or ``gone`` (counters of an interface that no
longer exists). With rates, each counter also has ``packets_per_s`` and
``bytes_per_s`` and the sample ``interval_s``.
"""
from __future__ import annotations

import time
from typing import Any

from vnetdp.datapath.reasons import DIRECTIONS, describe
from vnetdp.ops import inspect


def sample(dirs: inspect.NodeDirs, names: dict[int, str] | None = None) -> dict[str, Any]:
    """Every counter of the node, grouped by endpoint (sorted: pods, then the NIC)."""
    names = inspect.link_names() if names is None else names
    with inspect.open_maps(dirs) as m:
        now = time.time()
        metrics = m.metrics()
        who = inspect.identities(dirs, m, names)
    by_ifindex: dict[int, list[dict[str, Any]]] = {}
    for x in metrics:
        reason = describe(x.reason)
        by_ifindex.setdefault(x.ifindex, []).append(
            {"direction": DIRECTIONS.get(x.direction, str(x.direction)), "reason": reason.name,
             "drop": reason.is_drop, "packets": x.packets, "bytes": x.bytes})
    endpoints = []
    for ifindex, counters in by_ifindex.items():
        ident = who.get(ifindex) or {"kind": "gone", "interface": names.get(ifindex, f"ifindex-{ifindex}"),
                                     "container_id": "", "namespace": "", "pod": "", "address": "", "owner": ""}
        endpoints.append({**ident, "ifindex": ifindex,
                          "counters": sorted(counters, key=lambda c: (c["direction"], c["reason"]))})
    order = {"pod": 0, "nic": 1, "gone": 2}
    endpoints.sort(key=lambda e: (order.get(e["kind"], 3), e["namespace"], e["pod"], e["interface"]))
    return {"time": now, "endpoints": endpoints}


def _key(endpoint: dict, counter: dict) -> tuple:
    return endpoint["ifindex"], endpoint["interface"], counter["direction"], counter["reason"]


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with per-second rates since ``before`` on each counter (a
    counter that went down was reset: its rate counts from zero)."""
    dt = max(after["time"] - before["time"], 1e-9)
    old = {_key(e, c): c for e in before["endpoints"] for c in e["counters"]}
    out = []
    for e in after["endpoints"]:
        counters = []
        for c in e["counters"]:
            prev = old.get(_key(e, c), {"packets": 0, "bytes": 0})
            dp = c["packets"] - prev["packets"] if c["packets"] >= prev["packets"] else c["packets"]
            db = c["bytes"] - prev["bytes"] if c["bytes"] >= prev["bytes"] else c["bytes"]
            counters.append({**c, "packets_per_s": round(dp / dt, 3), "bytes_per_s": round(db / dt, 3)})
        out.append({**e, "counters": counters})
    return {"time": after["time"], "interval_s": round(dt, 3), "endpoints": out}


def watch(dirs: inspect.NodeDirs, every: float, count: int | None = None, sleep=time.sleep):
    """Samples with rates, one every ``every`` seconds (``count`` of them, or forever)."""
    previous = sample(dirs)
    done = 0
    while count is None or done < count:
        sleep(max(0.0, previous["time"] + every - time.time()))
        current = sample(dirs)
        yield rates(previous, current)
        previous, done = current, done + 1
