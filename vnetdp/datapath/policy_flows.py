"""Expiry of the flows pods' rules allowed (``policy_flows``), as the SNAT
table's: the datapath stamps them (last seen, TCP closing, replied), a sweep
removes the idle ones, with the SNAT sweep's timeouts, and those of pods that
have no rule set any more. ``snat.Sweeper`` runs both.
"""
from __future__ import annotations

from dataclasses import dataclass

from vnetdp.datapath import policy_maps as PM
from vnetdp.datapath import snat


@dataclass(frozen=True)
class SweepResult:
    expired: int     # flows idle beyond their timeout
    gone: int        # flows of pods without a rule set
    remaining: int


def sweep(pm: PM.PolicyMaps, timeouts: snat.Timeouts = snat.Timeouts(), now: int | None = None) -> SweepResult:
    now = snat.now_ns() if now is None else now
    pods = pm.endpoint_sets()
    expired = gone = remaining = 0
    for flow in pm.flows():
        idle = (now - flow.last_seen_ns) / 1e9
        if flow.pod not in pods:
            gone += pm.delete_flow(flow)
        elif idle > timeouts.for_flow(flow.proto, flow.closing, flow.replied):
            expired += pm.delete_flow(flow)
        else:
            remaining += 1
    return SweepResult(expired, gone, remaining)


def sweep_pinned(maps_dir: str, timeouts: snat.Timeouts = snat.Timeouts()) -> SweepResult | None:
    """A sweep of the flows pinned in ``maps_dir``; None when the node's
    programs have no policy maps."""
    pm = PM.PolicyMaps.pinned(maps_dir)
    if pm is None:
        return None
    with pm:
        return sweep(pm, timeouts)
