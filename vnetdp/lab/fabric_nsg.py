"""The fabric's network security groups (SPEC §7): groups in the model of
``vnetdp.policy.nsg`` attached to NICs or subnets, compiled into one nftables
table in the fabric namespace, replaced whole (one transaction) on every change.

Stateful, as the cloud's: packets of established flows pass. A new flow passes
the outbound groups of the NIC it comes from (the NIC's, then its subnet's)
and the inbound groups of the NIC it goes to (the subnet's, then the NIC's);
each must allow it. A deny rule drops and counts in ``counter_name(group, rule)``.
What is attached is kept in ``<lab dir>/nsgs.json`` (the groups as their files
wrote them).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from vnetdp.files import atomic_write
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns
from vnetdp.policy import nsg as N

TABLE = "vnd_nsg"
STATE_FILE = "nsgs.json"


class AttachError(ValueError):
    pass


@dataclass(frozen=True)
class Attached:
    """A group and where it is attached (fabric link names, subnet names)."""

    group: N.Nsg
    nics: tuple[str, ...] = ()
    subnets: tuple[str, ...] = ()


def scope() -> N.Scope:
    """The tags in the lab: VirtualNetwork is both peered VNets, Internet the lab's internet."""
    return N.Scope.of(P.VNET_SPACE, [P.INTERNET])


def counter_name(group: str, rule: str) -> str:
    return f"nsg_{group}_{rule}"


def match(rule: N.Rule, where: N.Scope) -> str | None:
    """The nft match expression of ``rule``; None when it can match nothing."""
    parts = []
    if rule.protocol is not N.Protocol.ANY:
        parts.append(f"meta l4proto {rule.protocol.value.lower()}")
    elif rule.names_ports:
        parts.append("meta l4proto { tcp, udp }")
    for field, prefixes in (("saddr", rule.source), ("daddr", rule.destination)):
        nets = where.resolve(prefixes)
        if nets is not None and not nets:
            return None
        if nets is not None:
            parts.append(f"ip {field} {{ {', '.join(map(str, nets))} }}")
    for field, ports in (("sport", rule.source_ports), ("dport", rule.destination_ports)):
        if ports != N.ALL_PORTS:
            parts.append(f"th {field} {{ {', '.join(str(lo) if lo == hi else f'{lo}-{hi}' for lo, hi in ports)} }}")
    return " ".join(parts)


def chain(group: N.Nsg, direction: N.Direction, where: N.Scope) -> list[str]:
    """One group's rules of one direction: allowed returns to the caller (the
    next group decides), denied drops."""
    lines = [f"  chain {group.name}_{direction.value} {{"]
    for rule in group.effective(direction):
        expr = match(rule, where)
        if expr is None:
            continue
        verdict = "return" if rule.access is N.Access.ALLOW \
            else f'counter name "{counter_name(group.name, rule.name)}" drop'
        lines.append(f"    {expr} {verdict}" if expr else f"    {verdict}")
    return lines + ["  }"]


def ruleset(attached: list[Attached], plan: P.Plan, where: N.Scope) -> str:
    """The whole table, replacing any previous one in the same transaction."""
    out = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}"]
    if not attached:
        return "\n".join(out) + "\n"
    nic_of = {nic: a.group.name for a in attached for nic in a.nics}
    subnet_of = {s: a.group.name for a in attached for s in a.subnets}
    out.append(f"table ip {TABLE} {{")
    counters = [counter_name(a.group.name, r.name) for a in attached
                for r in (*a.group.rules, *N.DEFAULT_RULES) if r.access is N.Access.DENY]
    clash = {c for c in counters if counters.count(c) > 1}
    if clash:
        raise AttachError(f"groups and rules whose names run together: counters {sorted(clash)}")
    out += [f"  counter {c} {{}}" for c in counters]
    for a in attached:
        out += chain(a.group, N.Direction.INBOUND, where) + chain(a.group, N.Direction.OUTBOUND, where)
    out += ["  chain forward {", "    type filter hook forward priority -10; policy accept;",
            "    ct state established,related accept"]
    subnets = {link: s for s in P.SUBNETS for link in plan.subnet_links(s)}
    for direction, key, order in ((N.Direction.OUTBOUND, "iifname", (nic_of, subnet_of)),
                                  (N.Direction.INBOUND, "oifname", (subnet_of, nic_of))):
        for link in plan.nics:
            for groups in order:
                name = groups.get(link if groups is nic_of else subnets[link])
                if name:
                    out.append(f'    {key} "{link}" jump {name}_{direction.value}')
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


# --- what is attached, kept with the lab ----------------------------------

def _state_path(plan: P.Plan) -> str:
    return os.path.join(plan.dir, STATE_FILE)


def _saved(plan: P.Plan) -> dict[str, dict]:
    try:
        with open(_state_path(plan)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _attachment(entry: dict) -> Attached:
    return Attached(N.parse(entry["doc"]), tuple(entry["nics"]), tuple(entry["subnets"]))


def attached(plan: P.Plan) -> list[Attached]:
    return [_attachment(e) for e in _saved(plan).values()]


def _check(plan: P.Plan, new: Attached, others: list[Attached]) -> None:
    if not new.nics and not new.subnets:
        raise AttachError(f"attach {new.group.name!r} to a NIC or a subnet")
    for kind, names, known, taken in (
            ("NIC", new.nics, plan.nics, {n: a.group.name for a in others for n in a.nics}),
            ("subnet", new.subnets, list(P.SUBNETS), {s: a.group.name for a in others for s in a.subnets})):
        for name in names:
            if name not in known:
                raise AttachError(f"no {kind} {name!r} in the lab ({', '.join(known)})")
            if name in taken:
                raise AttachError(f"{kind} {name!r} already has group {taken[name]!r} "
                                  f"(vnetdp-lab nsg delete {taken[name]})")


def apply(plan: P.Plan, doc: dict, nics: list[str] = (), subnets: list[str] = ()) -> Attached:
    """Attach the group ``doc`` (its JSON document) to ``nics`` and
    ``subnets``, replacing a group of the same name, and put the fabric's
    rules in force; a bad group or attachment changes nothing."""
    entry = {"doc": doc, "nics": list(nics), "subnets": list(subnets)}
    new = _attachment(entry)
    saved = _saved(plan)
    saved.pop(new.group.name, None)
    _check(plan, new, [_attachment(e) for e in saved.values()])
    _commit(plan, {**saved, new.group.name: entry})
    return new


def delete(plan: P.Plan, name: str) -> None:
    saved = _saved(plan)
    if saved.pop(name, None) is None:
        raise AttachError(f"no group {name!r} is attached (attached: {', '.join(saved) or 'none'})")
    _commit(plan, saved)


def _commit(plan: P.Plan, saved: dict[str, dict]) -> None:
    """Enforce ``saved`` in the fabric, then keep it: a ruleset nft refuses changes nothing."""
    in_ns(plan.fabric, ["nft", "-f", "-"], stdin=ruleset([_attachment(e) for e in saved.values()], plan, scope()))
    atomic_write(_state_path(plan), json.dumps(saved, indent=1))
