"""Pure functions: names, plans, documents, rules, the include expander."""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from vnetdp.datapath.loader import build_id, expand_includes
from vnetdp.endpoint import host_ifname
from vnetdp.lab import fabric, nmagent
from vnetdp.lab.plan import Plan
from vnetdp.paths import BPF_DIR


def test_host_ifname_is_vnd_plus_11_hex_and_stable():
    name = host_ifname("abc", "eth0")
    assert len(name) == 14 and name.startswith("vnd")
    int(name[3:], 16)
    assert name == host_ifname("abc", "eth0") != host_ifname("abc", "eth1")


def test_plan_addresses_follow_the_spec():
    p = Plan("", vms=2, pool=250)
    vm = p.vm(2)
    assert (p.inet, vm.ns) == ("vnd-inet", "vnd-vm2")
    assert vm.mac == "00:0d:3a:00:00:02" and str(vm.primary) == "10.3.0.5"
    assert [str(a) for a in vm.secondaries(250)[::249]] == ["10.3.2.1", "10.3.2.250"]
    with pytest.raises(ValueError):
        Plan(pool=251)


def test_interface_document_parses_and_marks_primary():
    doc = nmagent.interface_document("00:0d:3a:00:00:01", ipaddress.IPv4Network("10.3.0.0/16"),
                                     ipaddress.IPv4Address("10.3.0.4"),
                                     [ipaddress.IPv4Address("10.3.1.1")])
    iface = ET.fromstring(doc).find("Interface")
    assert iface.get("MacAddress") == "000D3A000001"
    addrs = {a.get("Address"): a.get("IsPrimary") for a in iface.iter("IPAddress")}
    assert addrs == {"10.3.0.4": "true", "10.3.1.1": "false"}


def test_fabric_ruleset_names_each_link_and_counter():
    rules = fabric.ruleset({"vm1": ("00:0d:3a:00:00:01", [ipaddress.IPv4Address("10.3.0.4")])},
                           [ipaddress.IPv4Address("10.3.0.4")])
    assert 'device "vm1"' in rules and "ether saddr != 00:0d:3a:00:00:01" in rules
    assert 'counter name "inet_not_primary" drop' in rules


def test_expand_includes_inlines_each_header_once_with_line_markers():
    text = expand_includes(BPF_DIR / "from_container.c")
    assert '#include "' not in text
    assert text.count("#ifndef VND_COMMON_H") == 1
    assert f'#line 1 "{(BPF_DIR / "lib" / "maps.h").resolve()}"' in text


def test_build_id_changes_with_flags():
    assert build_id(()) != build_id(("-DX=1",))
