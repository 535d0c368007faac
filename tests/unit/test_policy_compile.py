"""Compiling a group into the datapath's tables: exact (the tables decide every
packet as nsg.evaluate does), per pod (rules naming other pods' addresses left
out), bounded (a set the datapath cannot hold is refused), and the tables do
not grow with the rules that do not meet."""
from __future__ import annotations

import ipaddress
import random

import pytest

from vnetdp.datapath import policy_maps as PM
from vnetdp.policy import compile as C
from vnetdp.policy import nsg
from vnetdp.policy.nsg import Direction, Packet

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
TCP, UDP, ICMP, GRE = 6, 17, 1, 47
SCOPE = nsg.Scope.of([ipaddress.IPv4Network("10.3.0.0/16")])
POD = ipaddress.IPv4Address("10.3.1.1")


def rule(name: str, priority: int, direction: str = "Inbound", access: str = "Deny", protocol: str = "Tcp",
         source: str | list = "*", destination: str | list = "*", dports: str | list = "*",
         sports: str | list = "*") -> dict:
    def field(singular: str, value) -> dict:
        return {singular + ("es" if singular.endswith("x") else "s"): value} if isinstance(value, list) \
            else {singular: value}
    props = {"priority": priority, "direction": direction, "access": access, "protocol": protocol,
             **field("sourceAddressPrefix", source), **field("destinationAddressPrefix", destination),
             **field("sourcePortRange", sports), **field("destinationPortRange", dports)}
    return {"name": name, "properties": props}


def group(*rules: dict) -> nsg.Nsg:
    return nsg.parse({"name": "g", "properties": {"securityRules": list(rules)}})


def tables(g: nsg.Nsg, pod: ipaddress.IPv4Address = POD) -> PM.Tables:
    return C.compile_set(g, SCOPE, C.applicable(C.local_classes(g, SCOPE), pod))


def compiled_rule(g: nsg.Nsg, t: PM.Tables, packet: Packet) -> str | None:
    """The rule the tables give ``packet`` (None: no rule), checking its access too."""
    remote = packet.source if packet.direction is IN else packet.destination
    c = C.decide(t, C.DIRECTIONS[packet.direction], remote, packet.protocol, packet.source_port or 0,
                 packet.destination_port or 0)
    if c is None:
        return None
    r = C.rules(g)[c.rule]
    assert c.allow == (r.access is nsg.Access.ALLOW)
    return r.name


def packet(direction: Direction, proto: int, remote: str, sport: int | None = 40000, dport: int | None = 80,
           pod: ipaddress.IPv4Address = POD) -> Packet:
    if proto not in (TCP, UDP):
        sport = dport = None
    other = ipaddress.IPv4Address(remote)
    src, dst = (other, pod) if direction is IN else (pod, other)
    return Packet(direction, proto, src, dst, sport, dport)


def test_port_prefixes_cover_a_range_exactly_with_the_fewest():
    assert C.port_prefixes(0, 65535) == [(0, 0)]
    assert C.port_prefixes(80, 80) == [(80, 16)]
    assert C.port_prefixes(1000, 2000) == [(1000, 13), (1008, 12), (1024, 7), (1536, 8), (1792, 9),
                                           (1920, 10), (1984, 12), (2000, 16)]
    for first, last in [(1, 65534), (1000, 2000), (65535, 65535), (0, 1), (3, 17)]:
        covered = [v for value, length in C.port_prefixes(first, last)
                   for v in range(value, value + (1 << (16 - length)))]
        assert covered == list(range(first, last + 1))


def test_defaults_alone_allow_the_vnet_and_internet_out_and_deny_the_internet_in():
    g = group()
    t = tables(g)
    assert compiled_rule(g, t, packet(IN, TCP, "10.3.2.2")) == "AllowVnetInBound"
    assert compiled_rule(g, t, packet(IN, TCP, "198.18.0.1")) == "DenyAllInBound"
    assert compiled_rule(g, t, packet(IN, UDP, "168.63.129.16")) == "AllowAzureLoadBalancerInBound"
    assert compiled_rule(g, t, packet(OUT, ICMP, "198.18.0.1")) == "AllowInternetOutBound"
    assert compiled_rule(g, t, packet(OUT, GRE, "10.3.9.9")) == "AllowVnetOutBound"


def test_priority_ports_protocols_and_source_ports_decide_as_the_model_does():
    g = group(rule("deny-8080", 100, dports="8080"),
              rule("allow-range", 200, access="Allow", dports="8000-8999"),
              rule("udp-any", 300, protocol="Udp", access="Allow", source="198.18.0.0/24"),
              rule("low-sports", 150, protocol="*", dports=["9000", "9100-9200"], sports="1-1023"),
              rule("icmp-in", 400, protocol="Icmp", access="Allow", source="Internet"),
              rule("out-deny-db", 100, direction="Outbound", destination="10.3.5.0/24", dports="5432"))
    t = tables(g)
    cases = {
        packet(IN, TCP, "198.18.0.7", dport=8080): "deny-8080",
        packet(IN, TCP, "198.18.0.7", dport=8081): "allow-range",
        packet(IN, TCP, "198.18.0.7", dport=9000, sport=80): "low-sports",
        packet(IN, TCP, "198.18.0.7", dport=9000, sport=4000): "DenyAllInBound",
        packet(IN, UDP, "198.18.0.7", dport=9150, sport=53): "low-sports",
        packet(IN, UDP, "198.18.0.7", dport=9150, sport=5353): "udp-any",
        packet(IN, UDP, "198.18.1.7", dport=9150, sport=5353): "DenyAllInBound",
        packet(IN, ICMP, "198.18.1.7"): "icmp-in",
        packet(OUT, TCP, "10.3.5.9", dport=5432): "out-deny-db",
        packet(OUT, UDP, "10.3.5.9", dport=5432): "AllowVnetOutBound",
    }
    for p, expected in cases.items():
        assert compiled_rule(g, t, p) == expected == nsg.evaluate(g, p, SCOPE).name, p


def test_rules_for_other_pods_are_left_out_and_pods_alike_share_a_set():
    g = group(rule("deny-one-pod", 100, destination="10.3.1.1", dports="80"),
              rule("deny-subnet", 200, destination="10.3.2.0/24", dports="80"),
              rule("internet-only", 300, direction="Outbound", source="Internet"))
    names = [r.name for r in C.rules(g)]
    classes = C.local_classes(g, SCOPE)
    mine = {names[i] for i in C.applicable(classes, POD)}
    assert "deny-one-pod" in mine and not {"deny-subnet", "internet-only"} & mine
    assert C.applicable(classes, ipaddress.IPv4Address("10.3.2.5")) == \
        C.applicable(classes, ipaddress.IPv4Address("10.3.2.9"))
    other = ipaddress.IPv4Address("10.3.2.5")
    p = packet(IN, TCP, "10.3.0.9", pod=other)
    assert compiled_rule(g, tables(g, other), p) == "deny-subnet" == nsg.evaluate(g, p, SCOPE).name


def test_a_set_needing_more_candidates_than_the_datapath_holds_is_refused_naming_its_rules():
    g = group(*(rule(f"sp{i}", 100 + i, sports=str(1000 + i), dports="443") for i in range(PM.CANDIDATES)))
    with pytest.raises(C.CompileError, match=r"rules sp0, sp1, sp2, sp3.*at most 4"):
        tables(g)
    fits = group(*(rule(f"sp{i}", 100 + i, sports=str(1000 + i), dports="443") for i in range(PM.CANDIDATES - 1)))
    assert max(len(c) for c in tables(fits).ports.values()) == PM.CANDIDATES


def test_the_tables_grow_with_prefixes_and_ports_named_not_with_their_product():
    hosts = [rule(f"h{i}", 100 + i, source=f"198.18.{i // 250}.{i % 250 + 1}", dports=str(1000 + i))
             for i in range(500)]
    # broad prefixes' rules, each with its own ports: every host above lies inside Internet
    broad = [rule(f"b{i}", 1000 + i, source=["Internet", "*", "VirtualNetwork"][i % 3], dports=f"{20000 + i * 10}-"
                  f"{20005 + i * 10}") for i in range(500)]
    t = tables(group(*hosts, *broad))
    classes = set(t.addrs.values())
    assert len(t.addrs) < 600 and len(classes) < 600
    # a host's class holds its own port; the broad rules' ports are in the few broad classes
    # (without layers each host's class would repeat them: over 500 x 1000)
    assert len(t.ports) < 6 * 1000


def random_group(rng: random.Random) -> nsg.Nsg:
    prefixes = ["*", "VirtualNetwork", "Internet", "10.3.0.0/16", "10.3.1.0/24", "10.3.1.1", "198.18.0.0/15",
                "198.18.3.0/24", "0.0.0.0/1", "10.3.1.0/25", "168.63.129.16"]
    ports = ["*", "80", "443", "8000-8999", "1-1023", "53", "8080"]
    rules = []
    for i in range(rng.randint(1, 25)):
        protocol = rng.choice(["Tcp", "Udp", "Icmp", "*"])
        sports = rng.choice(["*"] * 6 + ["1-1023", "53"]) if protocol != "Icmp" else "*"
        dports = rng.choice(ports) if protocol != "Icmp" else "*"
        rules.append(rule(f"r{i}", 100 + i * 7, rng.choice(["Inbound", "Outbound"]), rng.choice(["Allow", "Deny"]),
                          protocol, rng.choice(prefixes), rng.choice(prefixes), dports, sports))
    return group(*rules)


def test_random_groups_decide_random_packets_exactly_as_the_model():
    rng = random.Random(16)
    remotes = ["10.3.1.1", "10.3.1.200", "10.3.2.2", "198.18.3.3", "198.18.9.9", "1.2.3.4", "168.63.129.16",
               "200.1.1.1", "10.3.1.100"]
    pods = [POD, ipaddress.IPv4Address("10.3.1.130"), ipaddress.IPv4Address("10.3.7.7")]
    checked = 0
    for _ in range(150):
        g = random_group(rng)
        for pod in pods:
            try:
                t = tables(g, pod)
            except C.CompileError:
                continue
            for _ in range(40):
                proto = rng.choice([TCP, UDP, ICMP, GRE])
                p = packet(rng.choice([IN, OUT]), proto, rng.choice(remotes), rng.choice([53, 80, 1000, 40000]),
                           rng.choice([22, 53, 80, 443, 8080, 8500, 9999]), pod)
                assert compiled_rule(g, t, p) == nsg.evaluate(g, p, SCOPE).name, (p, g)
                checked += 1
    assert checked > 10000
