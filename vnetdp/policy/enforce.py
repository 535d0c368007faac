"""Rule sets in force on a node: ``apply`` and ``delete`` (``vnetdp policy``),
and each endpoint's set when it is added (``policy_for_endpoint``, before its
endpoint entry is written) and deleted (``forget_endpoint``).

Everything but ``forget_endpoint`` runs under the store's lock. No packet
sees half a rule set: new tables go in under fresh set ids, then each
endpoint is switched to its set by one map update, then sets no endpoint
uses are removed. Flows the old set allowed that the new one denies are
forgotten, so a new rule holds for established flows too; flows it still
allows go on untouched. The endpoints are the node's pod records (CNI and
Docker: written before any plumbing, so a pod being added is never missed)
and the endpoint map's entries (endpoints made without records select by
address only).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from vnetdp.datapath import maps as M
from vnetdp.datapath import policy_maps as PM
from vnetdp.network.records import PodRecords
from vnetdp.policy import compile as C
from vnetdp.policy import nsg as N
from vnetdp.policy.store import Compiled, Member, PolicyError, RuleSet, Selectors, Store, check_claims, select


def _open_policy_maps(maps_dir: str) -> PM.PolicyMaps:
    pm = PM.PolicyMaps.pinned(maps_dir)
    if pm is None:
        raise PolicyError("the node's datapath programs predate node policy: run vnetdp upgrade, "
                          "then apply again")
    return pm


def _members(state_dir: str, maps: M.Maps) -> dict[ipaddress.IPv4Address, Member]:
    found = {ip: Member(ip) for ip in maps.endpoints()}
    for r in PodRecords(state_dir).all():
        ip = ipaddress.IPv4Address(r.address)
        found[ip] = Member(ip, r.k8s_namespace, r.k8s_pod, r.network)
    return found


class Sync:
    """Endpoints' sets for one pass, under the lock: compiles and writes what
    no set in the datapath holds yet."""

    def __init__(self, store: Store, maps: M.Maps, pm: PM.PolicyMaps, rule_sets: list[RuleSet]) -> None:
        self.store, self.pm, self.rule_sets = store, pm, rule_sets
        self.registry = store.registry()
        vnet = sorted(str(net) for net, dest in maps.cidrs().items() if dest is M.Dest.VNET)
        self.scope_key = tuple(vnet)
        self.scope = N.Scope.of(map(ipaddress.IPv4Network, vnet))
        self._groups: dict[str, N.Nsg] = {}
        self._tables: dict[int, PM.Tables] = {}
        self.changed = False

    def group(self, rule_set: RuleSet) -> N.Nsg:
        if rule_set.name not in self._groups:
            self._groups[rule_set.name] = rule_set.group()
        return self._groups[rule_set.name]

    def set_for(self, member: Member) -> int:
        """The set id ``member`` gets (0: none), written if needed."""
        rule_set = select(self.rule_sets, member)
        if rule_set is None:
            return 0
        which = (rule_set.name, rule_set.revision, self.scope_key)
        if which not in self.registry.locals:
            self.registry.locals[which] = C.local_classes(self.group(rule_set), self.scope)
            self.changed = True
        indices = C.applicable(self.registry.locals[which], member.address)
        key = (*which, indices)
        found = self.registry.find(key)
        if found is not None and self.pm.has_set(found.id):
            return found.id
        if found is not None:       # gone from the datapath (the node rebooted): written again
            del self.registry.sets[found.id]
        group = self.group(rule_set)
        try:
            tables = C.compile_set(group, self.scope, indices)
        except C.CompileError as e:
            raise PolicyError(f"rule set {rule_set.name!r} for {member.describe()}: {e}") from None
        set_id = self.registry.allocate()
        self.pm.write_set(set_id, tables)
        self.registry.sets[set_id] = Compiled(set_id, rule_set.name, rule_set.revision, self.scope_key, indices,
                                              tuple(r.name for r in C.rules(group)))
        self._tables[set_id] = tables
        self.changed = True
        return set_id

    def tables(self, set_id: int) -> PM.Tables:
        """The tables of a set of this pass's rule sets (compiled again if
        written before)."""
        if set_id not in self._tables:
            c = self.registry.sets[set_id]
            group = self.group(next(r for r in self.rule_sets if r.name == c.name))
            self._tables[set_id] = C.compile_set(group, self.scope, c.rules)
        return self._tables[set_id]

    def assign(self, address: ipaddress.IPv4Address, set_id: int) -> None:
        if set_id:
            if not self.pm.enabled():
                self.pm.set_enabled(True)
            self.pm.put_endpoint_set(address, set_id)
        else:
            self.pm.delete_endpoint_set(address)

    def save(self) -> None:
        if self.changed:
            self.store.save_registry(self.registry)


def _allows(tables: PM.Tables, flow: PM.Flow) -> bool:
    """Whether ``tables`` would let the flow's first packet open it now."""
    sport, dport = (flow.pod_port, flow.remote_port) if flow.direction == PM.OUTBOUND else \
        (flow.remote_port, flow.pod_port)
    decided = C.decide(tables, flow.direction, flow.remote, flow.proto, sport, dport)
    return decided is not None and decided.allow


def _revalidate(sync: Sync, flows: list[PM.Flow], set_id: int) -> int:
    """Forget the flows (of one pod) that its set ``set_id`` (0: none) would
    not allow now; the host's own flows stay. Returns how many went."""
    removed = 0
    for flow in flows:
        if flow.set == set_id or (set_id and flow.rule == PM.NO_RULE):
            continue
        if not set_id or not _allows(sync.tables(set_id), flow):
            removed += sync.pm.delete_flow(flow)
    return removed


@dataclass(frozen=True)
class SyncReport:
    endpoints: dict[str, str]       # address -> rule set name, for the endpoints that have one
    flows_removed: int
    sets_removed: int


def _sync_all(state_dir: str, store: Store, maps: M.Maps, pm: PM.PolicyMaps) -> SyncReport:
    """Every endpoint of the node to the set its rule set gives it; sets no
    endpoint uses, and sets the store does not know, removed."""
    sync = Sync(store, maps, pm, store.rule_sets())
    members = _members(state_dir, maps)
    wanted = {ip: sync.set_for(m) for ip, m in members.items()}   # every set written before any switch
    before = pm.endpoint_sets()
    flows: dict[ipaddress.IPv4Address, list[PM.Flow]] = defaultdict(list)
    for flow in pm.flows():
        flows[flow.pod].append(flow)
    removed = 0
    for ip, set_id in wanted.items():
        if before.get(ip, 0) != set_id:
            sync.assign(ip, set_id)
            removed += _revalidate(sync, flows[ip], set_id)
    for ip in before.keys() - wanted.keys():
        pm.delete_endpoint_set(ip)
    used = set(wanted.values()) - {0}
    stale = {i for i in sync.registry.sets if i not in used} | (pm.set_ids() - sync.registry.sets.keys())
    for set_id in stale:
        pm.delete_set(set_id)
        sync.registry.sets.pop(set_id, None)
    if stale:
        pm.forget_drops(lambda d: d.set in stale)
        sync.changed = True
    current = {(r.name, r.revision, sync.scope_key) for r in sync.rule_sets}
    for which in sync.registry.locals.keys() - current:
        del sync.registry.locals[which]
        sync.changed = True
    pm.set_enabled(bool(used))
    sync.save()
    names = {c.id: c.name for c in sync.registry.sets.values()}
    return SyncReport({str(ip): names[s] for ip, s in sorted(wanted.items()) if s}, removed, len(stale))


@contextlib.contextmanager
def _node_maps(maps_dir: str) -> Iterator[tuple[M.Maps, PM.PolicyMaps] | None]:
    """The node's maps; None before its first pod pins them."""
    if not os.path.isdir(maps_dir):
        yield None
        return
    with M.Maps(maps_dir) as maps, _open_policy_maps(maps_dir) as pm:
        yield maps, pm


def apply(state_dir: str, maps_dir: str, document: dict, selectors: Selectors) -> SyncReport | None:
    """Put the group ``document`` in force for the endpoints ``selectors``
    select, replacing a rule set of the same name; None when the node has no
    datapath yet (its first pod gets it). NsgError for a group the model
    refuses, PolicyError for what the node refuses: nothing changes then."""
    group = N.parse(document)
    store = Store(state_dir)
    with store.locked(), _node_maps(maps_dir) as node:
        old = store.get(group.name)
        new = RuleSet(group.name, document, selectors, old.revision + 1 if old else 1)
        check_claims(store.rule_sets(), new)
        store.save(new)
        if node is None:
            return None
        try:
            return _sync_all(state_dir, store, *node)
        except (PolicyError, PM.PolicyMapFull) as e:
            if old is None:
                store.remove(new.name)
            else:
                store.save(old)
            _sync_all(state_dir, store, *node)  # removes what the refused rule set wrote
            raise PolicyError(f"rule set {group.name!r} refused, nothing changed: {e}") from None


def delete(state_dir: str, maps_dir: str, name: str) -> SyncReport | None:
    """Remove a rule set; its endpoints get the next rule set that selects
    them, or none. PolicyError when there is no such rule set."""
    store = Store(state_dir)
    with store.locked(), _node_maps(maps_dir) as node:
        if not store.remove(name):
            raise PolicyError(f"no rule set {name!r} on this node")
        return _sync_all(state_dir, store, *node) if node else None


def _identity(state_dir: str, address: ipaddress.IPv4Address) -> Member:
    record = next((r for r in PodRecords(state_dir).all() if r.address == str(address)), None)
    return Member(address, record.k8s_namespace, record.k8s_pod, record.network) if record else Member(address)


def policy_for_endpoint(state_dir: str, maps: M.Maps, address: ipaddress.IPv4Address,
                        k8s_namespace: str = "", k8s_pod: str = "", network: str = "") -> str | None:
    """Give the endpoint at ``address`` its rule set's compiled set, before
    its endpoint entry is written (so its first packet meets the rules), and
    make sure an earlier endpoint's set at that address is gone; the rule
    set's name, None for none. Without pod names or network, the pod record
    with that address tells them (when a rule set selects by them).
    PolicyError when a rule set selects it but the node cannot enforce it."""
    store = Store(state_dir)
    if not store.has_rule_sets():  # the programs read nothing else then, and the sweep drops set-less flows
        pm = PM.PolicyMaps.pinned(maps.dir)
        if pm is not None:
            with pm:
                pm.delete_endpoint_set(address)
        return None
    with store.locked():
        rule_sets = store.rule_sets()
        member = Member(address, k8s_namespace, k8s_pod, network)
        if not (k8s_pod or network) and any(r.selectors.needs_identity() for r in rule_sets):
            member = _identity(state_dir, address)
        with _open_policy_maps(maps.dir) as pm:
            sync = Sync(store, maps, pm, rule_sets)
            set_id = sync.set_for(member)
            sync.save()
            sync.assign(address, set_id)
    return sync.registry.sets[set_id].name if set_id else None


def forget_endpoint(maps: M.Maps, address: ipaddress.IPv4Address) -> None:
    """An endpoint removed (DEL, or GC and reconcile for a stray): its set,
    flows and drop counters go (before its address can go to another pod)."""
    pm = PM.PolicyMaps.pinned(maps.dir)
    if pm is None:
        return
    with pm:
        pm.delete_endpoint_set(address)
        for flow in pm.flows():
            if flow.pod == address:
                pm.delete_flow(flow)
        pm.forget_drops(lambda d: d.pod == address)
