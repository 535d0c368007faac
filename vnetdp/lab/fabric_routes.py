"""The fabric's route tables (user-defined routes, SPEC §7), in the cloud's
model: a table of routes, each an ``addressPrefix`` and a ``nextHopType`` —
``VirtualAppliance`` (to ``nextHopIpAddress``, a host with IP forwarding, such
as the lab's appliance ``plan.APPLIANCE``) or ``None`` (dropped) — attached to
subnets::

    {"name": "via-nva", "properties": {"routes": [
      {"name": "hub", "properties": {"addressPrefix": "10.4.0.0/16",
                                     "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.4.0.200"}}]}}

The fabric routes what a subnet's NICs send through that subnet's routing
table (``ip rule iif <link> lookup <table>``, made by ``fabric.build``; an empty
table falls through to the main one), longest prefix first as the cloud does.
Applying a table to a subnet replaces the subnet's routes.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns, ip_batch

#: subnet -> the fabric's routing table number for what its NICs send
TABLES = {subnet: 100 + i for i, subnet in enumerate(P.SUBNETS)}
APPLIANCE_HOP, DROP_HOP = "VirtualAppliance", "None"


APPLIANCE_TABLE = "vnd_nva"
#: the appliance's own rules: forward everything, count it
APPLIANCE_RULES = f"""table ip {APPLIANCE_TABLE} {{
  counter forwarded {{}}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    counter name "forwarded"
  }}
}}
"""


class RouteError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    name: str
    prefix: ipaddress.IPv4Network
    next_hop: ipaddress.IPv4Address | None   # None: dropped


def parse(doc: Any) -> list[Route]:
    """A route table's routes; RouteError naming the route and field."""
    props = doc.get("properties") if isinstance(doc, dict) else None
    if not isinstance(props, dict) or not isinstance(props.get("routes"), list):
        raise RouteError("a route table is an object with properties.routes, a list")
    return [_route(r, i) for i, r in enumerate(props["routes"])]


def _route(obj: Any, index: int) -> Route:
    name = obj.get("name") if isinstance(obj, dict) else None
    props = obj.get("properties") if isinstance(obj, dict) else None
    if not isinstance(name, str) or not isinstance(props, dict):
        raise RouteError(f"route #{index + 1} needs a name and a properties object")
    try:
        prefix = ipaddress.IPv4Network(props.get("addressPrefix"))
    except (ValueError, TypeError) as e:
        raise RouteError(f"route {name!r} addressPrefix: {e}") from None
    hop = props.get("nextHopType")
    if hop == DROP_HOP:
        return Route(name, prefix, None)
    if hop != APPLIANCE_HOP:
        raise RouteError(f"route {name!r} nextHopType: the lab models {APPLIANCE_HOP} and {DROP_HOP}, not {hop!r}")
    try:
        address = ipaddress.IPv4Address(props.get("nextHopIpAddress"))
    except (ValueError, TypeError) as e:
        raise RouteError(f"route {name!r} nextHopIpAddress: {e}") from None
    if not any(h.forwards and h.ip == address for h in P.HOSTS):
        raise RouteError(f"route {name!r} nextHopIpAddress: {address} is no host with IP forwarding "
                         f"(the appliance is {P.APPLIANCE.ip})")
    return Route(name, prefix, address)


def route_lines(subnet: str, routes: list[Route]) -> list[str]:
    """``ip -batch`` lines that make ``routes`` the subnet's."""
    table = TABLES[subnet]
    lines = [f"route flush table {table}"]
    for r in routes:
        appliance = next((h for h in P.HOSTS if h.ip == r.next_hop), None)
        lines.append(f"route replace blackhole {r.prefix} table {table}" if appliance is None
                     else f"route replace {r.prefix} via {r.next_hop} dev {appliance.role} onlink table {table}")
    return lines


def rule_lines(plan: P.Plan) -> list[str]:
    """The fabric's policy rules: each NIC's traffic through its subnet's table first."""
    return [f"rule add iif {link} lookup {table} pref {table}"
            for subnet, table in TABLES.items() for link in plan.subnet_links(subnet)]


def apply(plan: P.Plan, doc: Any, subnets: list[str]) -> list[Route]:
    routes = parse(doc)
    unknown = [s for s in subnets if s not in TABLES]
    if unknown or not subnets:
        raise RouteError(f"attach the route table to subnets of the lab ({', '.join(TABLES)}), not {unknown}")
    ip_batch(plan.fabric, [line for s in subnets for line in route_lines(s, routes)])
    return routes


def clear(plan: P.Plan, subnets: list[str]) -> None:
    ip_batch(plan.fabric, [f"route flush table {TABLES[s]}" for s in subnets])


def start_appliance(plan: P.Plan) -> None:
    """The appliance VM forwards (without ICMP redirects: it sends back out
    of the NIC it received on) and counts what it forwards."""
    ns = plan.host_ns(P.APPLIANCE)
    in_ns(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
               "net.ipv4.conf.eth0.send_redirects=0"])
    in_ns(ns, ["nft", "-f", "-"], stdin=APPLIANCE_RULES)


def appliance_forwarded(plan: P.Plan) -> int:
    """Packets the appliance has forwarded (its nft counter)."""
    proc = in_ns(plan.host_ns(P.APPLIANCE), ["nft", "-j", "list", "counter", "ip", APPLIANCE_TABLE, "forwarded"])
    return next(i["counter"]["packets"] for i in json.loads(proc.stdout)["nftables"] if "counter" in i)
