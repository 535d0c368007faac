"""The NSG model: parsing (refusing bad files whole, naming rule and field),
tags, ports, the cloud's default rules and first-match evaluation."""
from __future__ import annotations

import ipaddress
import json

import pytest

from vnetdp.policy import nsg
from vnetdp.policy.nsg import Access, Direction, NsgError, Packet, Protocol

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
TCP, UDP, ICMP = 6, 17, 1
SCOPE = nsg.Scope.of([ipaddress.IPv4Network("10.3.0.0/16"), ipaddress.IPv4Network("10.4.0.0/16")],
                     internet=[ipaddress.IPv4Network("198.18.0.0/15")])


def rule(name: str = "r", **props) -> dict:
    base = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "*", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": "8080"}
    base.update(props)
    return {"name": name, "properties": {k: v for k, v in base.items() if v is not None}}


def group(*rules: dict, name: str = "g") -> dict:
    return {"name": name, "properties": {"securityRules": list(rules)}}


def pkt(src: str, dst: str, proto: int = TCP, dport: int | None = 8080, sport: int | None = 40000,
        direction: Direction = IN) -> Packet:
    if proto not in (TCP, UDP):
        sport = dport = None
    return Packet(direction, proto, ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), sport, dport)


def decide(doc: dict, packet: Packet) -> str:
    return nsg.evaluate(nsg.parse(doc), packet, SCOPE).name


# --- parsing -----------------------------------------------------------------

def test_a_rule_parses_into_the_model():
    g = nsg.parse(group(rule("web", access="allow", protocol="TCP", direction="inbound",
                             sourceAddressPrefixes=["10.4.0.0/16", "virtualnetwork"], sourceAddressPrefix=None,
                             destinationPortRanges=["443", "80", "1000-2000"], destinationPortRange=None,
                             destinationAddressPrefix="10.3.2.1")))
    [r] = g.rules
    assert (r.name, r.priority, r.direction, r.access, r.protocol) == ("web", 100, IN, Access.ALLOW, Protocol.TCP)
    assert r.source == ("10.4.0.0/16", "VirtualNetwork")
    assert r.destination == ("10.3.2.1/32",)
    assert r.destination_ports == ((80, 80), (443, 443), (1000, 2000))
    assert r.source_ports == nsg.ALL_PORTS


def test_the_apis_read_only_fields_and_unused_forms_are_ignored():
    doc = group(rule(sourceAddressPrefixes=[], destinationPortRanges=None))
    doc["id"] = "/subscriptions/x"
    doc["properties"]["provisioningState"] = "Succeeded"
    doc["properties"]["securityRules"][0]["properties"]["description"] = "why"
    assert nsg.parse(doc).rules[0].name == "r"


def test_a_star_among_ports_means_all_ports():
    [r] = nsg.parse(group(rule(destinationPortRange=None, destinationPortRanges=["80", "*"]))).rules
    assert r.destination_ports == nsg.ALL_PORTS and not r.names_ports


@pytest.mark.parametrize("props,rule_name,field,words", [
    ({"priority": 99}, "r", "priority", "100-4096"),
    ({"priority": 4097}, "r", "priority", "100-4096"),
    ({"priority": "100"}, "r", "priority", "whole number"),
    ({"priority": True}, "r", "priority", "whole number"),
    ({"direction": "Sideways"}, "r", "direction", "Inbound, Outbound"),
    ({"access": "Maybe"}, "r", "access", "Allow, Deny"),
    ({"protocol": "Gre"}, "r", "protocol", "Tcp, Udp, Icmp, *"),
    ({"protocol": None}, "r", "protocol", "required"),
    ({"sourceAddressPrefix": "10.3.0.1/16"}, "r", "sourceAddressPrefix", "host bits"),
    ({"sourceAddressPrefix": "Storage"}, "r", "sourceAddressPrefix", "VirtualNetwork, Internet"),
    ({"sourceAddressPrefix": "fd00::/8"}, "r", "sourceAddressPrefix", "IPv4"),
    ({"destinationAddressPrefixes": ["10.0.0.0/8"]}, "r", "destinationAddressPrefix", "not both"),
    ({"destinationAddressPrefix": None}, "r", None, "destinationAddressPrefix or destinationAddressPrefixes"),
    ({"destinationPortRange": None, "destinationPortRanges": "80"}, "r", "destinationPortRanges", "a list"),
    ({"destinationPortRange": None, "destinationPortRanges": []}, "r", None, "destinationPortRange or"),
    ({"destinationPortRange": "2000-1000"}, "r", "destinationPortRange", "0-65535"),
    ({"destinationPortRange": "70000"}, "r", "destinationPortRange", "0-65535"),
    ({"sourcePortRange": "http"}, "r", "sourcePortRange", "'first-last'"),
    ({"protocol": "Icmp"}, "r", "protocol", "no ports"),
    ({"destinationPortRnage": "80"}, "r", None, "destinationPortRnage"),
])
def test_bad_rules_are_refused_naming_rule_and_field(props, rule_name, field, words):
    with pytest.raises(NsgError) as e:
        nsg.parse(group(rule("ok", priority=200), rule(**props)))
    assert (e.value.rule, e.value.field) == (rule_name, field)
    assert words in str(e.value) and str(e.value).startswith("rule 'r'")


def test_priorities_are_unique_per_direction_only():
    nsg.parse(group(rule("a"), rule("b", direction="Outbound")))
    with pytest.raises(NsgError, match="100 is already 'a'") as e:
        nsg.parse(group(rule("a"), rule("b")))
    assert (e.value.rule, e.value.field) == ("b", "priority")


@pytest.mark.parametrize("second", ["a", "A", "DenyAllInBound"])
def test_rule_names_are_unique_and_not_a_default_rules(second):
    rules = [rule(second, priority=200)] if second == "DenyAllInBound" else [rule("a"), rule(second, priority=200)]
    with pytest.raises(NsgError, match="name is taken"):
        nsg.parse(group(*rules))


@pytest.mark.parametrize("doc,words", [
    ([], "JSON object"),
    ({"properties": {}}, "no name"),
    ({"name": "g"}, "'properties' object"),
    ({"name": "g", "properties": {"securityRules": {}}}, "must be a list"),
    ({"name": "g", "properties": {"rules": []}}, "unknown field"),
    (group({"properties": {}}), "#1 has no name"),
])
def test_bad_groups_are_refused(doc, words):
    with pytest.raises(NsgError, match=words):
        nsg.parse(doc)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "nsg.json"
    path.write_text(json.dumps(group(rule(priority=1))))
    with pytest.raises(NsgError, match=f"^{path}: rule 'r' priority"):
        nsg.load(str(path))
    path.write_text("{")
    with pytest.raises(NsgError, match="is not JSON"):
        nsg.load(str(path))
    with pytest.raises(NsgError, match="No such file"):
        nsg.load(str(tmp_path / "missing.json"))


def test_an_empty_group_is_the_default_rules():
    g = nsg.parse(group())
    assert [r.name for r in g.effective(IN)] == ["AllowVnetInBound", "AllowAzureLoadBalancerInBound",
                                                 "DenyAllInBound"]
    assert [(r.name, r.priority) for r in g.effective(OUT)] == [
        ("AllowVnetOutBound", 65000), ("AllowInternetOutBound", 65001), ("DenyAllOutBound", 65500)]


# --- scope and tags ----------------------------------------------------------

def test_internet_defaults_to_everything_outside_the_vnet():
    scope = nsg.Scope.of([ipaddress.IPv4Network("10.3.0.0/16")])
    inet = scope.resolve(("Internet",))
    assert not any(n.overlaps(ipaddress.IPv4Network("10.3.0.0/16")) for n in inet)
    assert sum(n.num_addresses for n in inet) == 2 ** 32 - 2 ** 16


def test_complement_of_nothing_and_everything():
    assert nsg.complement([]) == (ipaddress.IPv4Network("0.0.0.0/0"),)
    assert nsg.complement([ipaddress.IPv4Network("0.0.0.0/0")]) == ()


def test_resolve_mixes_tags_and_prefixes():
    assert SCOPE.resolve(("VirtualNetwork", "198.18.0.1/32")) == (
        ipaddress.IPv4Network("10.3.0.0/16"), ipaddress.IPv4Network("10.4.0.0/16"),
        ipaddress.IPv4Network("198.18.0.1/32"))
    assert SCOPE.resolve(("10.3.0.0/16", "*")) is None


# --- evaluation --------------------------------------------------------------

def test_defaults_allow_the_vnet_and_deny_the_internet_inbound():
    empty = group()
    assert decide(empty, pkt("10.3.0.100", "10.3.1.1")) == "AllowVnetInBound"
    assert decide(empty, pkt("10.4.0.4", "10.3.1.1")) == "AllowVnetInBound"       # peered space
    assert decide(empty, pkt("198.18.0.1", "10.3.1.1")) == "DenyAllInBound"
    assert decide(empty, pkt("168.63.129.16", "10.3.1.1")) == "AllowAzureLoadBalancerInBound"


def test_defaults_outbound():
    empty = group()
    assert decide(empty, pkt("10.3.1.1", "10.3.2.1", direction=OUT)) == "AllowVnetOutBound"
    assert decide(empty, pkt("10.3.1.1", "198.18.0.1", direction=OUT)) == "AllowInternetOutBound"
    assert decide(empty, pkt("10.3.1.1", "8.8.8.8", direction=OUT)) == "DenyAllOutBound"  # outside this scope's internet


def test_a_tcp_port_rule_leaves_ping_and_other_ports_alone():
    doc = group(rule("deny-8080", destinationAddressPrefix="10.3.2.1"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1")) == "deny-8080"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", dport=8081)) == "AllowVnetInBound"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=ICMP)) == "AllowVnetInBound"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=UDP)) == "AllowVnetInBound"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.2")) == "AllowVnetInBound"
    assert decide(doc, pkt("10.3.2.1", "10.3.0.100", direction=OUT)) == "AllowVnetOutBound"


def test_any_protocol_with_ports_matches_tcp_and_udp_not_icmp():
    doc = group(rule(protocol="*"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=UDP)) == "r"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=ICMP)) == "AllowVnetInBound"


def test_any_protocol_without_ports_matches_icmp():
    doc = group(rule(protocol="*", destinationPortRange="*"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=ICMP)) == "r"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=47)) == "r"   # GRE


def test_icmp_rule_matches_only_icmp():
    doc = group(rule(protocol="Icmp", destinationPortRange="*"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=ICMP)) == "r"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1")) == "AllowVnetInBound"


def test_the_lowest_priority_number_wins_whatever_the_file_order():
    doc = group(rule("deny", priority=300), rule("allow", priority=200, access="Allow"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1")) == "allow"


@pytest.mark.parametrize("port,expected", [(999, "AllowVnetInBound"), (1000, "r"), (1500, "r"), (2000, "r"),
                                           (2001, "AllowVnetInBound"), (22, "r")])
def test_port_ranges_and_lists(port, expected):
    doc = group(rule(destinationPortRange=None, destinationPortRanges=["1000-2000", "22"]))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", dport=port)) == expected


def test_source_ports_are_matched_too():
    doc = group(rule(sourcePortRange="53", destinationPortRange="*", protocol="Udp"))
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=UDP, sport=53)) == "r"
    assert decide(doc, pkt("10.3.0.100", "10.3.2.1", proto=UDP, sport=54)) == "AllowVnetInBound"


def test_an_allow_rule_opens_the_internet_inbound():
    doc = group(rule("web", access="Allow", sourceAddressPrefix="Internet", destinationPortRange="80"))
    assert decide(doc, pkt("198.18.0.1", "10.3.1.1", dport=80)) == "web"
    assert decide(doc, pkt("198.18.0.1", "10.3.1.1", dport=81)) == "DenyAllInBound"


def test_a_deny_vnet_rule_overrides_the_default_allow():
    doc = group(rule("no-peering", sourceAddressPrefix="10.4.0.0/16", protocol="*", destinationPortRange="*"))
    assert decide(doc, pkt("10.4.0.4", "10.3.1.1", proto=ICMP)) == "no-peering"
    assert decide(doc, pkt("10.3.0.100", "10.3.1.1", proto=ICMP)) == "AllowVnetInBound"


def test_outbound_rules_see_outbound_packets_only():
    doc = group(rule("no-inet", direction="Outbound", destinationAddressPrefix="Internet",
                     protocol="*", destinationPortRange="*"))
    assert decide(doc, pkt("10.3.1.1", "198.18.0.1", direction=OUT, proto=ICMP)) == "no-inet"
    assert decide(doc, pkt("198.18.0.1", "10.3.1.1", proto=ICMP)) == "DenyAllInBound"


@pytest.mark.parametrize("name", ["-x", "a b", "x.", "a" * 81, "ü"])
def test_names_follow_the_clouds_rules(name):
    with pytest.raises(NsgError, match="not a valid name"):
        nsg.parse(group(rule(name)))
    with pytest.raises(NsgError, match="not a valid name"):
        nsg.parse(group(name=name))
