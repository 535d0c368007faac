"""Network security groups in the cloud's own model (SPEC §7, §11).

A file holds one group as the cloud's API writes it::

    {"name": "web", "properties": {"securityRules": [
      {"name": "deny-8080", "properties": {
        "priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
        "sourceAddressPrefix": "*", "sourcePortRange": "*",
        "destinationAddressPrefix": "10.3.2.1", "destinationPortRange": "8080"}}]}}

Each of the four match fields takes the singular form or the plural one
(``destinationPortRanges: ["80", "1000-2000"]``), never both. Prefixes are
CIDRs, single addresses, ``*`` or the tags ``VirtualNetwork``, ``Internet`` and
``AzureLoadBalancer``, which a ``Scope`` gives addresses where the rules are
enforced. Ports are ``*``, ``80`` or ``1000-2000``, and constrain only TCP and
UDP: a rule that names ports never matches ICMP or another protocol, and an
``Icmp`` rule must not name any. The cloud's default rules (priorities
65000-65500) follow the group's own; a packet gets the first rule that matches
in priority order (``evaluate``). A bad file is refused whole, the error
naming the rule and the field.
"""
from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ANY = "*"
PRIORITY_MIN, PRIORITY_MAX = 100, 4096
PORT_MAX = 65535
#: read-only fields the cloud's API returns and a file may carry; ignored
IGNORED = frozenset({"id", "etag", "type", "location", "tags", "provisioningState", "resourceGuid",
                     "description", "defaultSecurityRules", "networkInterfaces", "subnets"})
IPNet = ipaddress.IPv4Network
PortRange = tuple[int, int]
#: the cloud's resource names: 1-80 word characters, '.' or '-', starting with a
#: letter or digit, ending with a word character
NAME = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,78}\w)?", re.ASCII)
ALL_PORTS: tuple[PortRange, ...] = ((0, PORT_MAX),)


class Direction(str, enum.Enum):
    INBOUND = "Inbound"
    OUTBOUND = "Outbound"


class Access(str, enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


class Protocol(str, enum.Enum):
    TCP = "Tcp"
    UDP = "Udp"
    ICMP = "Icmp"
    ANY = ANY

    @property
    def number(self) -> int | None:
        """The IP protocol number; None for any."""
        return {"Tcp": 6, "Udp": 17, "Icmp": 1}.get(self.value)


PORT_PROTOCOLS = frozenset({6, 17})  # the IP protocols that carry ports


class Tag(str, enum.Enum):
    VIRTUAL_NETWORK = "VirtualNetwork"
    INTERNET = "Internet"
    LOAD_BALANCER = "AzureLoadBalancer"


class NsgError(ValueError):
    """A group the model refuses; ``rule`` and ``field`` name what is wrong."""

    def __init__(self, why: str, rule: str | None = None, field: str | None = None) -> None:
        where = " ".join(p for p in (f"rule {rule!r}" if rule else "", field or "") if p)
        super().__init__(f"{where}: {why}" if where else why)
        self.rule, self.field, self.why = rule, field, why


@dataclass(frozen=True)
class Rule:
    """One security rule. Prefixes are kept as written (normalised: CIDRs in
    their network form, tags in the cloud's spelling): what a tag means is the
    ``Scope``'s business."""

    name: str
    priority: int
    direction: Direction
    access: Access
    protocol: Protocol
    source: tuple[str, ...]
    source_ports: tuple[PortRange, ...]
    destination: tuple[str, ...]
    destination_ports: tuple[PortRange, ...]

    @property
    def names_ports(self) -> bool:
        return self.source_ports != ALL_PORTS or self.destination_ports != ALL_PORTS


def _default(name: str, priority: int, direction: Direction, access: Access, source: str,
             destination: str) -> Rule:
    return Rule(name, priority, direction, access, Protocol.ANY, (source,), ALL_PORTS, (destination,), ALL_PORTS)


_IN, _OUT, _ALLOW, _DENY = Direction.INBOUND, Direction.OUTBOUND, Access.ALLOW, Access.DENY
#: the rules the cloud puts after every group's own
DEFAULT_RULES: tuple[Rule, ...] = (
    _default("AllowVnetInBound", 65000, _IN, _ALLOW, Tag.VIRTUAL_NETWORK.value, Tag.VIRTUAL_NETWORK.value),
    _default("AllowAzureLoadBalancerInBound", 65001, _IN, _ALLOW, Tag.LOAD_BALANCER.value, ANY),
    _default("DenyAllInBound", 65500, _IN, _DENY, ANY, ANY),
    _default("AllowVnetOutBound", 65000, _OUT, _ALLOW, Tag.VIRTUAL_NETWORK.value, Tag.VIRTUAL_NETWORK.value),
    _default("AllowInternetOutBound", 65001, _OUT, _ALLOW, ANY, Tag.INTERNET.value),
    _default("DenyAllOutBound", 65500, _OUT, _DENY, ANY, ANY),
)


@dataclass(frozen=True)
class Nsg:
    name: str
    rules: tuple[Rule, ...]     # the group's own, as the file lists them

    def effective(self, direction: Direction) -> list[Rule]:
        """The rules of one direction, defaults included, in the order they apply."""
        return sorted((r for r in (*self.rules, *DEFAULT_RULES) if r.direction == direction),
                      key=lambda r: r.priority)


def complement(prefixes: Iterable[IPNet]) -> tuple[IPNet, ...]:
    """The IPv4 space outside ``prefixes``, as few prefixes as it takes."""
    rest = [IPNet("0.0.0.0/0")]
    for p in ipaddress.collapse_addresses(prefixes):
        pieces: list[IPNet] = []
        for r in rest:              # disjoint pieces: each holds p, lies in p, or misses it
            if p.subnet_of(r):
                pieces += r.address_exclude(p)
            elif not r.subnet_of(p):
                pieces.append(r)
        rest = pieces
    return tuple(ipaddress.collapse_addresses(rest))


@dataclass(frozen=True)
class Scope:
    """What the tags mean where the rules are enforced."""

    vnet: tuple[IPNet, ...]                  # the VNet's address space and peered spaces
    internet: tuple[IPNet, ...]
    load_balancer: tuple[IPNet, ...] = (IPNet("168.63.129.16/32"),)  # the cloud's probe source

    @classmethod
    def of(cls, vnet: Iterable[IPNet], internet: Iterable[IPNet] | None = None) -> Scope:
        """``internet`` by default everything outside the VNet."""
        vnet = tuple(ipaddress.collapse_addresses(vnet))
        return cls(vnet, tuple(internet) if internet is not None else complement(vnet))

    def resolve(self, prefixes: tuple[str, ...]) -> tuple[IPNet, ...] | None:
        """The addresses ``prefixes`` stand for; None when they include ``*``."""
        if ANY in prefixes:
            return None
        tags = {Tag.VIRTUAL_NETWORK.value: self.vnet, Tag.INTERNET.value: self.internet,
                Tag.LOAD_BALANCER.value: self.load_balancer}
        out: list[IPNet] = []
        for p in prefixes:
            out += tags[p] if p in tags else [IPNet(p)]
        return tuple(ipaddress.collapse_addresses(out))


@dataclass(frozen=True)
class Packet:
    """The first packet of a flow as a rule sees it; ports None without TCP/UDP."""

    direction: Direction
    protocol: int                              # IP protocol number
    source: ipaddress.IPv4Address
    destination: ipaddress.IPv4Address
    source_port: int | None = None
    destination_port: int | None = None


def _in(addr: ipaddress.IPv4Address, nets: tuple[IPNet, ...] | None) -> bool:
    return nets is None or any(addr in n for n in nets)


def _port_in(port: int | None, ranges: tuple[PortRange, ...]) -> bool:
    return ranges == ALL_PORTS or (port is not None and any(lo <= port <= hi for lo, hi in ranges))


def matches(rule: Rule, packet: Packet, scope: Scope) -> bool:
    if rule.direction != packet.direction:
        return False
    if rule.protocol is not Protocol.ANY and rule.protocol.number != packet.protocol:
        return False
    if rule.names_ports and packet.protocol not in PORT_PROTOCOLS:
        return False
    return (_in(packet.source, scope.resolve(rule.source))
            and _in(packet.destination, scope.resolve(rule.destination))
            and _port_in(packet.source_port, rule.source_ports)
            and _port_in(packet.destination_port, rule.destination_ports))


def evaluate(nsg: Nsg, packet: Packet, scope: Scope) -> Rule:
    """The rule that decides ``packet``: the first that matches, by priority
    (a default rule when none of the group's own does)."""
    return next(r for r in nsg.effective(packet.direction) if matches(r, packet, scope))


# --- parsing --------------------------------------------------------------

def _enum(kind: type[enum.Enum], value: Any, rule: str, field: str) -> Any:
    """A value of ``kind``, its spelling any case, as the cloud's API takes it."""
    if isinstance(value, str):
        for member in kind:
            if member.value.lower() == value.lower():
                return member
    raise NsgError(f"must be one of {', '.join(m.value for m in kind)}, not {value!r}", rule, field)


def _prefix(value: Any, rule: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise NsgError(f"must be a CIDR, an address, '*' or a tag, not {value!r}", rule, field)
    if value == ANY:
        return ANY
    for tag in Tag:
        if value.lower() == tag.value.lower():
            return tag.value
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise NsgError(f"{value!r} is neither an IPv4 prefix nor a tag this model knows "
                       f"({', '.join(t.value for t in Tag)})", rule, field) from None
    if net.version != 4:
        raise NsgError(f"{value!r}: only IPv4 is modelled", rule, field)
    if str(net) != value and f"{net.network_address}" != value:
        raise NsgError(f"{value!r} has host bits set (the prefix is {net})", rule, field)
    return str(net)


def _port_range(value: Any, rule: str, field: str) -> PortRange:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise NsgError(f"must be '*', a port or 'first-last', not {value!r}", rule, field)
    if text == ANY:
        return ALL_PORTS[0]
    lo, sep, hi = text.partition("-")
    if not (lo.isdigit() and (hi.isdigit() if sep else True)):
        raise NsgError(f"{value!r} is not '*', a port or 'first-last'", rule, field)
    first, last = int(lo), int(hi) if sep else int(lo)
    if not first <= last <= PORT_MAX:
        raise NsgError(f"{value!r} is not a range within 0-{PORT_MAX}", rule, field)
    return first, last


def _one_or_many(props: dict, singular: str, rule: str) -> tuple[str, list]:
    """The values of a field given as ``x`` or as the list of its plural; the
    name used. Null and ``[]`` count as absent, as the cloud's API returns the
    form not used."""
    plural = singular + ("es" if singular.endswith("x") else "s")
    given = [f for f in (singular, plural) if props.get(f) not in (None, [])]
    if len(given) == 2:
        raise NsgError(f"give {singular} or {plural}, not both", rule, singular)
    if not given:
        raise NsgError(f"{singular} or {plural} is required", rule)
    if given[0] == singular:
        return singular, [props[singular]]
    if not isinstance(props[plural], list):
        raise NsgError("must be a list", rule, plural)
    return plural, props[plural]


def _prefixes(props: dict, singular: str, rule: str) -> tuple[str, ...]:
    field, values = _one_or_many(props, singular, rule)
    return tuple(dict.fromkeys(_prefix(v, rule, field) for v in values))


def _ports(props: dict, singular: str, rule: str) -> tuple[PortRange, ...]:
    field, values = _one_or_many(props, singular, rule)
    ranges = sorted({_port_range(v, rule, field) for v in values})
    return ALL_PORTS if ALL_PORTS[0] in ranges else tuple(ranges)


_RULE_FIELDS = frozenset({"priority", "direction", "access", "protocol",
                          "sourceAddressPrefix", "sourceAddressPrefixes", "sourcePortRange", "sourcePortRanges",
                          "destinationAddressPrefix", "destinationAddressPrefixes",
                          "destinationPortRange", "destinationPortRanges"})


def _properties(obj: Any, what: str, rule: str | None = None) -> dict:
    """``obj``'s properties, refusing fields the model does not know."""
    if not isinstance(obj, dict) or not isinstance(obj.get("properties"), dict):
        raise NsgError(f"{what} must be an object with a 'properties' object", rule)
    unknown = obj.keys() - {"name", "properties"} - IGNORED
    if unknown:
        raise NsgError(f"unknown field(s) {sorted(unknown)}", rule)
    return obj["properties"]


def _name(obj: Any, what: str) -> str:
    name = obj.get("name") if isinstance(obj, dict) else None
    if not isinstance(name, str) or not name:
        raise NsgError(f"{what} has no name")
    if not NAME.fullmatch(name):
        raise NsgError(f"{what}'s name {name!r} is not a valid name (1-80 letters, digits, '_', '.', '-', "
                       "starting with a letter or digit, ending with a letter, digit or '_')")
    return name


def parse_rule(obj: Any, index: int) -> Rule:
    name = _name(obj, f"security rule #{index + 1}")
    props = _properties(obj, "a security rule", name)
    unknown = props.keys() - _RULE_FIELDS - IGNORED
    if unknown:
        raise NsgError(f"unknown field(s) {sorted(unknown)}", name)
    for field in ("priority", "direction", "access", "protocol"):
        if field not in props:
            raise NsgError("is required", name, field)
    priority = props["priority"]
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise NsgError(f"must be a whole number {PRIORITY_MIN}-{PRIORITY_MAX}, not {priority!r}", name, "priority")
    rule = Rule(name, priority, _enum(Direction, props["direction"], name, "direction"),
                _enum(Access, props["access"], name, "access"),
                _enum(Protocol, props["protocol"], name, "protocol"),
                _prefixes(props, "sourceAddressPrefix", name), _ports(props, "sourcePortRange", name),
                _prefixes(props, "destinationAddressPrefix", name), _ports(props, "destinationPortRange", name))
    if rule.protocol is Protocol.ICMP and rule.names_ports:
        raise NsgError("an Icmp rule has no ports: use '*'", name, "protocol")
    return rule


def parse(doc: Any) -> Nsg:
    """One group from its JSON document; NsgError for anything the model refuses."""
    if not isinstance(doc, dict):
        raise NsgError("the document must be a JSON object: a network security group")
    name = _name(doc, "the network security group")
    props = _properties(doc, "a network security group")
    unknown = props.keys() - {"securityRules"} - IGNORED
    if unknown:
        raise NsgError(f"unknown field(s) {sorted(unknown)} in the group's properties")
    raw = props.get("securityRules", [])
    if not isinstance(raw, list):
        raise NsgError("securityRules must be a list")
    rules = tuple(parse_rule(r, i) for i, r in enumerate(raw))
    _check_unique(rules)
    return Nsg(name, rules)


def _check_unique(rules: tuple[Rule, ...]) -> None:
    names: set[str] = {r.name.lower() for r in DEFAULT_RULES}
    priorities: dict[tuple[Direction, int], str] = {}
    for r in rules:
        if r.name.lower() in names:
            raise NsgError("the name is taken (by another rule or a default rule)", r.name, "name")
        names.add(r.name.lower())
        other = priorities.setdefault((r.direction, r.priority), r.name)
        if other != r.name:
            raise NsgError(f"{r.priority} is already {other!r}'s ({r.direction.value} priorities are unique)",
                           r.name, "priority")


def load(path: str) -> Nsg:
    """A group from a JSON file; errors name the file."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise NsgError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise NsgError(f"{path} is not JSON: {e}") from None
    try:
        return parse(doc)
    except NsgError as e:
        e.args = (f"{path}: {e}",)
        raise
