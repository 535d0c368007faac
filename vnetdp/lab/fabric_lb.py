"""The lab's internal load balancer (SPEC §7), in the cloud's model and
shape, kept small: a file holds one load balancer as the cloud's API writes it
(other fields are ignored)::

    {"name": "ilb", "properties": {
      "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "10.3.0.200"}}],
      "backendAddressPools": [{"name": "pods", "properties": {"loadBalancerBackendAddresses": [
        {"name": "a", "properties": {"ipAddress": "10.3.1.1"}},
        {"name": "b", "properties": {"ipAddress": "10.3.2.1"}}]}}],
      "probes": [{"name": "tcp-8080", "properties": {"protocol": "Tcp", "port": 8080,
                                                    "intervalInSeconds": 1, "numberOfProbes": 1}}],
      "loadBalancingRules": [{"name": "web", "properties": {
        "protocol": "Tcp", "frontendPort": 80, "backendPort": 8080,
        "frontendIPConfiguration": {"id": "fe"}, "backendAddressPool": {"id": "pods"},
        "probe": {"id": "tcp-8080"}}}]}}

A reference (``{"id": ...}``) names its object by the id's last path segment,
so the cloud's full resource ids work too. The frontend is the lab's one
frontend address (``plan.LB_FRONTEND``, on the fabric), the default when
``privateIPAddress`` is left out.

Enforced by the fabric (table ``vnd_lb``, replaced whole): a new TCP
connection to a rule's frontend and port, from anywhere but the internet, is
sent to the rule's healthy backends in turn (DNAT, ``numgen inc``), without
source NAT, as the cloud's internal load balancer does: the backend sees the
client, and its replies return through the fabric (every VM's gateway), where
conntrack reverses the translation. A rule without a healthy backend drops
(counter ``lb_<rule>_no_backend``). Health: a probe process (``lb_probe``)
connects to every backend's probe port every ``intervalInSeconds`` (the
lab's default 1, the cloud's 15), from the fabric's gateway address; a
backend is out after ``numberOfProbes`` failures in a row (default 1) and
back after one success, and the table is rewritten whenever that changes.
What is applied is kept in ``<lab dir>/lb.json``, the health in
``<lab dir>/lb-health.json``.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

from vnetdp.files import atomic_write
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns
from vnetdp.lab.topology import Lab
from vnetdp.policy.nsg import NAME

TABLE = "vnd_lb"
CONFIG_FILE, HEALTH_FILE = "lb.json", "lb-health.json"
PROBE_MODULE = "vnetdp.lab.lb_probe"
IPv4 = ipaddress.IPv4Address


class LbError(ValueError):
    pass


@dataclass(frozen=True)
class Probe:
    name: str
    port: int
    interval_s: int = 1
    threshold: int = 1      # failures in a row that take a backend out


@dataclass(frozen=True)
class Rule:
    name: str
    frontend: IPv4
    frontend_port: int
    backend_port: int
    backends: tuple[IPv4, ...]
    probe: Probe | None     # None: every backend counts as healthy


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    rules: tuple[Rule, ...]

    def targets(self) -> dict[tuple[IPv4, int], Probe]:
        """What the probe process probes: (backend, port) -> its probe."""
        return {(b, r.probe.port): r.probe for r in self.rules if r.probe for b in r.backends}


Health = dict[tuple[IPv4, int], bool]   # (backend, probe port) -> in


def healthy(rule: Rule, health: Health) -> list[IPv4]:
    """The rule's backends that take new connections (unprobed: not yet out)."""
    return [b for b in rule.backends if rule.probe is None or health.get((b, rule.probe.port), True)]


# --- the cloud's document ----------------------------------------------------------------------

def _named(props: dict, field: str, where: str) -> dict[str, dict]:
    """A list of named objects: name -> properties."""
    items = props.get(field, [])
    if not isinstance(items, list):
        raise LbError(f"{where}: {field} must be a list")
    out = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise LbError(f"{where}: {field} #{i + 1} needs a name (letters, digits, '_', '.', '-')")
        if not isinstance(item.get("properties", {}), dict):
            raise LbError(f"{where}: {field} {name!r}: properties must be an object")
        out[name] = item.get("properties", {})
    return out


def _int(props: dict, field: str, where: str, low: int, high: int, default: int | None = None) -> int:
    value = props.get(field, default)
    if type(value) is not int or not low <= value <= high:
        raise LbError(f"{where} {field}: must be a whole number {low}-{high}, not {value!r}")
    return value


def _tcp(props: dict, where: str) -> None:
    if str(props.get("protocol", "")).lower() != "tcp":
        raise LbError(f"{where} protocol: the lab balances and probes Tcp, not {props.get('protocol')!r}")


def _ref(props: dict, field: str, table: dict[str, Any], where: str, required: bool = True) -> Any:
    ref = props.get(field)
    if ref is None and not required:
        return None
    name = ref.get("id", "").rsplit("/", 1)[-1] if isinstance(ref, dict) and isinstance(ref.get("id"), str) else None
    if name not in table:
        raise LbError(f"{where} {field}: {ref!r} names none of {sorted(table)}")
    return table[name]


def _frontend(props: dict, where: str) -> IPv4:
    try:
        address = IPv4(props.get("privateIPAddress", str(P.LB_FRONTEND)))
    except ValueError as e:
        raise LbError(f"{where} privateIPAddress: {e}") from None
    if address != P.LB_FRONTEND:
        raise LbError(f"{where} privateIPAddress: the lab's frontend address is {P.LB_FRONTEND}, not {address}")
    return address


def _pool(props: dict, where: str) -> tuple[IPv4, ...]:
    out = []
    for name, member in _named(props, "loadBalancerBackendAddresses", where).items():
        try:
            address = IPv4(member.get("ipAddress"))
        except ValueError as e:
            raise LbError(f"{where} backend {name!r} ipAddress: {e}") from None
        if not any(address in net for net in P.VNET_SPACE):
            raise LbError(f"{where} backend {name!r}: {address} is not in the virtual network")
        out.append(address)
    if not out:
        raise LbError(f"{where}: no backend addresses")
    return tuple(out)


def _probe(name: str, props: dict) -> Probe:
    where = f"probe {name!r}"
    _tcp(props, where)
    return Probe(name, _int(props, "port", where, 1, 65535), _int(props, "intervalInSeconds", where, 1, 3600, 1),
                 _int(props, "numberOfProbes", where, 1, 100, 1))


def parse(doc: Any) -> LoadBalancer:
    """A load balancer from its document; LbError naming the object and field."""
    name = doc.get("name") if isinstance(doc, dict) else None
    props = doc.get("properties") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(props, dict):
        raise LbError("a load balancer is an object with a name and a properties object")
    frontends = {n: _frontend(p, f"frontend {n!r}") for n, p in _named(props, "frontendIPConfigurations", name).items()}
    pools = {n: _pool(p, f"pool {n!r}") for n, p in _named(props, "backendAddressPools", name).items()}
    probes = {n: _probe(n, p) for n, p in _named(props, "probes", name).items()}
    rules, taken = [], set()
    for rule, p in _named(props, "loadBalancingRules", name).items():
        where = f"rule {rule!r}"
        _tcp(p, where)
        frontend = _ref(p, "frontendIPConfiguration", frontends, where)
        port = _int(p, "frontendPort", where, 1, 65535)
        if (frontend, port) in taken:
            raise LbError(f"{where}: another rule already balances {frontend}:{port}")
        taken.add((frontend, port))
        rules.append(Rule(rule, frontend, port, _int(p, "backendPort", where, 1, 65535, port),
                          _ref(p, "backendAddressPool", pools, where), _ref(p, "probe", probes, where, False)))
    if not rules:
        raise LbError(f"{name}: no loadBalancingRules")
    return LoadBalancer(name, tuple(rules))


def document(name: str, backends: list[str], frontend_port: int, backend_port: int) -> dict:
    """The cloud's document of a load balancer with one TCP rule, the lab's
    frontend on ``frontend_port`` to ``backends`` on ``backend_port``,
    probed there every second."""
    return {"name": name, "properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": str(P.LB_FRONTEND)}}],
        "backendAddressPools": [{"name": "pool", "properties": {"loadBalancerBackendAddresses": [
            {"name": f"backend{i}", "properties": {"ipAddress": b}} for i, b in enumerate(backends)]}}],
        "probes": [{"name": "tcp", "properties": {"protocol": "Tcp", "port": backend_port, "intervalInSeconds": 1}}],
        "loadBalancingRules": [{"name": "tcp", "properties": {
            "protocol": "Tcp", "frontendPort": frontend_port, "backendPort": backend_port,
            "frontendIPConfiguration": {"id": "fe"}, "backendAddressPool": {"id": "pool"}, "probe": {"id": "tcp"}}}]}}


# --- the fabric's table ------------------------------------------------------------------------

def counter_name(rule: str) -> str:
    return f"lb_{rule}_no_backend"


def ruleset(lb: LoadBalancer | None, health: Health) -> str:
    """The whole table for ``lb`` with ``health`` (none: no table), replacing
    any previous one in the same transaction."""
    out = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}"]
    if lb is None:
        return "\n".join(out) + "\n"
    balanced, dropped = [], []
    for r in lb.rules:
        match = f'iifname != "inet" ip daddr {r.frontend} tcp dport {r.frontend_port}'
        up = healthy(r, health)
        if up:
            targets = ", ".join(f"{i} : {b} . {r.backend_port}" for i, b in enumerate(up))
            balanced.append(f"    {match} dnat ip to numgen inc mod {len(up)} map {{ {targets} }}")
        else:
            dropped.append(f'    {match} counter name "{counter_name(r.name)}" drop')
    out += [f"table ip {TABLE} {{", *(f"  counter {counter_name(r.name)} {{}}" for r in lb.rules),
            "  chain balance {", "    type nat hook prerouting priority dstnat; policy accept;", *balanced, "  }",
            "  chain no_backend {", "    type filter hook prerouting priority mangle; policy accept;", *dropped,
            "  }", "}"]
    return "\n".join(out) + "\n"


def enforce(plan: P.Plan, lb: LoadBalancer | None, health: Health) -> None:
    in_ns(plan.fabric, ["nft", "-f", "-"], stdin=ruleset(lb, health))


# --- what is applied, kept with the lab -------------------------------------------------------

def _path(plan: P.Plan, name: str) -> str:
    return os.path.join(plan.dir, name)


def applied(plan: P.Plan) -> LoadBalancer | None:
    """The load balancer the fabric runs, None when there is none."""
    try:
        with open(_path(plan, CONFIG_FILE)) as f:
            return parse(json.load(f))
    except FileNotFoundError:
        return None


def health(plan: P.Plan) -> Health:
    """What the last probes found: (backend, probe port) -> in."""
    try:
        with open(_path(plan, HEALTH_FILE)) as f:
            return {(IPv4(a), int(port)): up for a, port, up in json.load(f)}
    except FileNotFoundError:
        return {}


def record_health(plan: P.Plan, found: Health) -> None:
    atomic_write(_path(plan, HEALTH_FILE), json.dumps([[str(a), port, up] for (a, port), up in found.items()]))


def apply(plan: P.Plan, doc: Any) -> LoadBalancer:
    """Make ``doc`` the lab's load balancer (replacing any), its rules in
    force at once for every backend, the probe process (re)started to take
    out those that fail; a bad document changes nothing."""
    lb = parse(doc)
    lab = Lab(plan)
    lab.stop(PROBE_MODULE)
    atomic_write(_path(plan, CONFIG_FILE), json.dumps(doc))
    record_health(plan, {})
    enforce(plan, lb, {})
    lab.start(plan.fabric, PROBE_MODULE, ["--id", plan.lab_id])
    return lb


def delete(plan: P.Plan) -> None:
    """No load balancer: the probe process stopped, the table removed."""
    Lab(plan).stop(PROBE_MODULE)
    for name in (CONFIG_FILE, HEALTH_FILE):
        try:
            os.remove(_path(plan, name))
        except FileNotFoundError:
            pass
    enforce(plan, None, {})
