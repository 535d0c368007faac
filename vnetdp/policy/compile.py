"""A network security group, for the pods it applies to, as the datapath's
lookup tables (``bpf/lib/policy.h`` explains the lookups).

A group's rules are numbered once (``rules``): its own and the default rules,
Inbound by priority, then Outbound; drop counters name rules by that index.
A pod gets the rules whose local prefixes (Inbound: destination, Outbound:
source) hold its address (``applicable``, on the group's ``local_classes``,
which the control plane keeps so that an ADD need not read the group); pods
with the same such rules share one compiled set (``compile_set``). Compiling is exact: for every
packet the tables give the rule ``nsg.evaluate`` gives, the tests check it.

Both lookups rest on one fact: prefixes nest or are disjoint, so the items
(rules) whose prefixes hold a value are those holding the longest of all
their prefixes that holds it. Each prefix an item names, and the 0-length
one, is therefore stored with the items holding it (``_holders``): the
remote address's prefixes, then per address class and protocol the prefixes
that cover the rules' destination port ranges. Rules naming a remote prefix
of BROAD bits or fewer (tags, "*") are one layer, the rest another, so that
the classes of hosts inside a broad prefix do not repeat its rules' ports.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterator, Mapping

from vnetdp.datapath import policy_maps as PM
from vnetdp.policy import nsg as N

Prefix = tuple[int, int]  # (value, length in bits)
BROAD = 16                # remote prefixes this long or shorter put a rule in layer 0
DIRECTIONS = {N.Direction.INBOUND: PM.INBOUND, N.Direction.OUTBOUND: PM.OUTBOUND}


class CompileError(ValueError):
    """A group the datapath cannot hold (too many rules naming source ports meet)."""


def rules(group: N.Nsg) -> tuple[N.Rule, ...]:
    """Every rule of ``group``, defaults included, by index."""
    return (*group.effective(N.Direction.INBOUND), *group.effective(N.Direction.OUTBOUND))


def remote(rule: N.Rule) -> tuple[str, ...]:
    """The prefixes of the other side of a pod's flow."""
    return rule.source if rule.direction is N.Direction.INBOUND else rule.destination


def local(rule: N.Rule) -> tuple[str, ...]:
    """The prefixes of the pod's side."""
    return rule.destination if rule.direction is N.Direction.INBOUND else rule.source


def port_prefixes(first: int, last: int) -> list[Prefix]:
    """The fewest prefixes of 16-bit values that cover first-last."""
    out = []
    while first <= last:
        size = first & -first or 1 << 16
        while size > last - first + 1:
            size >>= 1
        out.append((first, 17 - size.bit_length()))
        first += size
    return out


def _ancestors(prefix: Prefix, width: int) -> Iterator[Prefix]:
    """``prefix`` and every shorter prefix that holds it."""
    value, length = prefix
    for n in range(length + 1):
        yield value & (((1 << n) - 1) << (width - n)), n


def _holders(named: Mapping[int, list[Prefix] | None], width: int) -> dict[Prefix, tuple[int, ...]]:
    """For each prefix an item names, and the 0-length one: the items whose
    prefixes hold it, sorted. An item naming None holds everything."""
    everywhere = [i for i, prefixes in named.items() if prefixes is None]
    index: dict[Prefix, list[int]] = defaultdict(list)
    for i, prefixes in named.items():
        for p in prefixes or ():
            index[p].append(i)
    out = {}
    for p in {(0, 0), *index}:
        found = set(everywhere)
        for a in _ancestors(p, width):
            found.update(index.get(a, ()))
        out[p] = tuple(sorted(found))
    return out


def _address_prefixes(nets: tuple[N.IPNet, ...] | None) -> list[Prefix] | None:
    return None if nets is None else [(int(n.network_address), n.prefixlen) for n in nets]


def local_classes(group: N.Nsg, scope: N.Scope) -> dict[Prefix, tuple[int, ...]]:
    """For each local prefix the rules name, and 0/0: the rules that can
    decide a flow of a pod whose address it is the longest to hold."""
    named = {i: _address_prefixes(scope.resolve(local(rule))) for i, rule in enumerate(rules(group))
             if scope.resolve(remote(rule)) != ()}
    return _holders(named, 32)


def applicable(classes: dict[Prefix, tuple[int, ...]], address: ipaddress.IPv4Address) -> tuple[int, ...]:
    """The indices of the rules that can decide a flow of the pod at
    ``address``, from its group's ``local_classes``."""
    return next(classes[p] for p in _longest_first(_ancestors((int(address), 32), 32)) if p in classes)


def _layer(prefixes: list[Prefix] | None) -> int:
    return 0 if prefixes is None or any(length <= BROAD for _, length in prefixes) else 1


def _carries(rule: N.Rule, proto: int) -> bool:
    """Whether ``rule`` can match packets of ``proto`` (PM.PROTOCOLS): rules
    that name ports match only TCP and UDP."""
    if rule.protocol is not N.Protocol.ANY:
        return rule.protocol.number == proto
    return proto in N.PORT_PROTOCOLS or not rule.names_ports


def _destination_prefixes(rule: N.Rule, proto: int) -> list[Prefix] | None:
    if proto not in N.PORT_PROTOCOLS or rule.destination_ports == N.ALL_PORTS:
        return None
    return [p for first, last in rule.destination_ports for p in port_prefixes(first, last)]


def _candidates(all_rules: tuple[N.Rule, ...], holders: tuple[int, ...]) -> tuple[PM.Candidate, ...]:
    """The rules that decide by source port, by priority, up to the first that takes any."""
    out: list[PM.Candidate] = []
    for i in holders:
        rule = all_rules[i]
        out += [PM.Candidate(i, rule.access is N.Access.ALLOW, ports) for ports in rule.source_ports]
        if rule.source_ports == N.ALL_PORTS:
            break
    if len(out) > PM.CANDIDATES:
        names = ", ".join(dict.fromkeys(all_rules[c.rule].name for c in out))
        raise CompileError(f"rules {names} name source ports and meet at one address and destination port: "
                           f"the datapath decides among at most {PM.CANDIDATES} rules there (a rule with n source "
                           "port ranges counts n); merge their source port ranges or give them other destinations")
    return tuple(out)


def compile_set(group: N.Nsg, scope: N.Scope, indices: tuple[int, ...]) -> PM.Tables:
    """The tables of ``group``'s rules ``indices`` (``applicable``'s);
    CompileError when the datapath cannot hold them."""
    all_rules = rules(group)
    tables = PM.Tables()
    classes: dict[tuple[int, ...], int] = {}
    for direction, code in DIRECTIONS.items():
        named = {i: _address_prefixes(scope.resolve(remote(all_rules[i])))
                 for i in indices if all_rules[i].direction is direction}
        for layer in range(PM.LAYERS):
            mine = {i: prefixes for i, prefixes in named.items() if _layer(prefixes) == layer}
            for (addr, length), members in _holders(mine, 32).items():
                tables.addrs[(code, layer, addr, length)] = classes.setdefault(members, len(classes) + 1)
    for members, cls in classes.items():
        for proto in PM.PROTOCOLS:
            named = {i: _destination_prefixes(all_rules[i], proto) for i in members if _carries(all_rules[i], proto)}
            for (port, length), holders in _holders(named, 16).items():
                tables.ports[PM.PortPrefix(cls, proto, port, length)] = _candidates(all_rules, holders)
    return tables


def _longest_first(prefixes: Iterator[Prefix]) -> list[Prefix]:
    return list(prefixes)[::-1]


def _match(tables: PM.Tables, direction: int, layer: int, address: ipaddress.IPv4Address, proto: int, sport: int,
           dport: int) -> PM.Candidate | None:
    classes = (tables.addrs.get((direction, layer, *p)) for p in _longest_first(_ancestors((int(address), 32), 32)))
    cls = next((c for c in classes if c is not None), None)
    if cls is None:
        return None
    ported = proto in N.PORT_PROTOCOLS
    proto_class = proto if proto in PM.PROTOCOLS else PM.PROTO_OTHER
    found = (tables.ports.get(PM.PortPrefix(cls, proto_class, *p))
             for p in _longest_first(_ancestors((dport if ported else 0, 16), 16)))
    candidates = next((c for c in found if c is not None), ())
    sport = sport if ported else 0
    return next((c for c in candidates if c.sport[0] <= sport <= c.sport[1]), None)


def decide(tables: PM.Tables, direction: int, remote: ipaddress.IPv4Address, proto: int, sport: int = 0,
           dport: int = 0) -> PM.Candidate | None:
    """The candidate that decides a new flow, as the datapath finds it
    (policy_decide in bpf/lib/policy.h); None when none does (denied)."""
    matches = [c for layer in range(PM.LAYERS)
               if (c := _match(tables, direction, layer, remote, proto, sport, dport)) is not None]
    return min(matches, key=lambda c: c.rule, default=None)
