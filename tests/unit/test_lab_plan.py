"""The emulated lab's pure parts: the address plan, the host agent's interface
document, the fabric's nftables ruleset."""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from vnetdp.ipam.sources import parse_document, pools_of
from vnetdp.lab import fabric, nmagent
from vnetdp.lab.plan import Plan


def test_plan_addresses_follow_the_spec():
    p = Plan("", vms=2, pool=250)
    vm = p.vm(2)
    assert (p.inet, vm.ns) == ("vnd-inet", "vnd-vm2")
    assert vm.mac == "00:0d:3a:00:00:02" and str(vm.primary) == "10.3.0.5"
    assert [str(a) for a in vm.secondaries(250)[::249]] == ["10.3.2.1", "10.3.2.250"]
    with pytest.raises(ValueError):
        Plan(pool=251)


def interface_document() -> str:
    return nmagent.interface_document("00:0d:3a:00:00:01", ipaddress.IPv4Network("10.3.0.0/16"),
                                      ipaddress.IPv4Address("10.3.0.4"),
                                      [ipaddress.IPv4Address("10.3.1.1")])


def test_interface_document_parses_and_marks_primary():
    iface = ET.fromstring(interface_document()).find("Interface")
    assert iface.get("MacAddress") == "000D3A000001"
    addrs = {a.get("Address"): a.get("IsPrimary") for a in iface.iter("IPAddress")}
    assert addrs == {"10.3.0.4": "true", "10.3.1.1": "false"}


def test_interface_document_gives_ipam_the_secondaries_as_its_pool():
    [pool] = pools_of(parse_document(interface_document()), "00:0d:3a:00:00:01")
    assert (str(pool.subnet), [str(a) for a in pool.addresses]) == ("10.3.0.0/16", ["10.3.1.1"])


def test_fabric_ruleset_names_each_link_and_counter():
    rules = fabric.ruleset({"vm1": ("00:0d:3a:00:00:01", [ipaddress.IPv4Address("10.3.0.4")])},
                           [ipaddress.IPv4Address("10.3.0.4")])
    assert 'device "vm1"' in rules and "ether saddr != 00:0d:3a:00:00:01" in rules
    assert 'counter name "inet_not_primary" drop' in rules
