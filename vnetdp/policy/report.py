"""``vnetdp policy show``: the node's rule sets, which endpoint has which,
and the packets each rule denied each endpoint, by name."""
from __future__ import annotations

import os

from vnetdp.datapath import policy_maps as PM
from vnetdp.network.records import PodRecords
from vnetdp.policy.store import Registry, Store

DIRECTIONS = {PM.INBOUND: "Inbound", PM.OUTBOUND: "Outbound"}


def _rule_name(registry: Registry, set_id: int, rule: int) -> tuple[str, str]:
    """(rule set, rule) of a drop counter."""
    c = registry.sets.get(set_id)
    if c is None:
        return f"set {set_id}", f"rule {rule}"
    return c.name, c.rule_names[rule] if rule < len(c.rule_names) else "(no rule: set incomplete)"


def _datapath(maps_dir: str, registry: Registry, pods: dict[str, str]) -> dict:
    pm = PM.PolicyMaps.pinned(maps_dir)
    if pm is None:
        return {"endpoints": [], "drops": [], "flows": 0, "note": "the node's programs predate node policy"}
    with pm:
        endpoints = [{"address": str(ip), "pod": pods.get(str(ip), ""), "set": set_id,
                      "ruleSet": registry.sets[set_id].name if set_id in registry.sets else None}
                     for ip, set_id in sorted(pm.endpoint_sets().items())]
        drops = []
        for d in sorted(pm.drops(), key=lambda d: (d.pod, d.set, d.direction, d.rule)):
            rule_set, rule = _rule_name(registry, d.set, d.rule)
            drops.append({"address": str(d.pod), "pod": pods.get(str(d.pod), ""), "ruleSet": rule_set,
                          "rule": rule, "direction": DIRECTIONS[d.direction], "packets": d.packets,
                          "bytes": d.bytes})
        return {"endpoints": endpoints, "drops": drops, "flows": len(pm.flows())}


def show(state_dir: str, maps_dir: str) -> dict:
    store = Store(state_dir)
    registry = store.registry()
    pods = {r.address: f"{r.k8s_namespace}/{r.k8s_pod}" for r in PodRecords(state_dir).all() if r.k8s_pod}
    found = {"ruleSets": [{"name": r.name, "revision": r.revision, "rules": len(r.group().rules),
                           "selects": r.selectors.describe()} for r in store.rule_sets()]}
    if os.path.isdir(maps_dir):
        found.update(_datapath(maps_dir, registry, pods))
    else:
        found.update({"endpoints": [], "drops": [], "flows": 0, "note": "no datapath on this node yet"})
    return found


def render(found: dict) -> str:
    lines = [f"rule set {r['name']} (revision {r['revision']}, {r['rules']} rules): {r['selects']}"
             for r in found["ruleSets"]] or ["no rule sets"]
    for e in found["endpoints"]:
        pod = f" {e['pod']}" if e["pod"] else ""
        lines.append(f"endpoint {e['address']}{pod}: {e['ruleSet'] or '?'} (set {e['set']})")
    for d in found["drops"]:
        lines.append(f"denied {d['address']} {d['direction']:<8} {d['ruleSet']}/{d['rule']}: "
                     f"{d['packets']} packets, {d['bytes']} bytes")
    lines.append(f"{found['flows']} flows kept")
    if "note" in found:
        lines.append(f"({found['note']})")
    return "\n".join(lines)
