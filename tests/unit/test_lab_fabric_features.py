"""The lab fabric's cloud features as text: security groups compiled to
nftables, route tables to ip routes, the plan's extra hosts. Where nft is at
hand (root), the compiled tables pass its check mode (nothing is applied)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

import pytest

from vnetdp.lab import fabric, fabric_nsg, fabric_routes
from vnetdp.lab import plan as P
from vnetdp.policy import nsg

PLAN = P.Plan("", vms=2)


def rule(name: str, **props) -> dict:
    base = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "*", "sourcePortRange": "*",
            "destinationAddressPrefix": "10.3.2.1", "destinationPortRange": "8080"}
    return {"name": name, "properties": {**base, **props}}


def group(name: str, *rules: dict) -> dict:
    return {"name": name, "properties": {"securityRules": list(rules)}}


WEB = group("web", rule("deny-8080"),
            rule("web-in", priority=200, access="Allow", protocol="*", sourceAddressPrefix="Internet",
                 destinationAddressPrefix="*", destinationPortRange=None, destinationPortRanges=["80", "8000-8100"]))


def compiled(*attached: fabric_nsg.Attached) -> str:
    return fabric_nsg.ruleset(list(attached), PLAN, fabric_nsg.scope())


def nft_accepts(text: str) -> None:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("nft's check mode needs root and nft")
    proc = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rules_compile_in_priority_order_with_counters_on_denies():
    text = compiled(fabric_nsg.Attached(nsg.parse(WEB), nics=("vm2",)))
    chain = text[text.index("chain web_Inbound"):text.index("chain web_Outbound")].splitlines()[1:-2]
    assert chain == [
        '    meta l4proto tcp ip daddr { 10.3.2.1/32 } th dport { 8080 } counter name "nsg_web_deny-8080" drop',
        "    meta l4proto { tcp, udp } ip saddr { 198.18.0.0/15 } th dport { 80, 8000-8100 } return",
        "    ip saddr { 10.3.0.0/16, 10.4.0.0/16 } ip daddr { 10.3.0.0/16, 10.4.0.0/16 } return",
        "    ip saddr { 168.63.129.16/32 } return",
        '    counter name "nsg_web_DenyAllInBound" drop',
    ]
    for name in ("nsg_web_deny-8080", "nsg_web_DenyAllInBound", "nsg_web_DenyAllOutBound"):
        assert f"  counter {name} {{}}" in text
    assert "counter nsg_web_web-in" not in text


def test_flows_pass_nic_then_subnet_out_and_subnet_then_nic_in_and_replies_pass():
    text = compiled(fabric_nsg.Attached(nsg.parse(WEB), nics=("vm2",)),
                    fabric_nsg.Attached(nsg.parse(group("sub")), subnets=("default",)))
    forward = text[text.index("chain forward"):].splitlines()
    assert forward[2] == "    ct state established,related accept"
    jumps = [line.strip() for line in forward if "jump" in line]
    assert jumps.index('iifname "vm2" jump web_Outbound') < jumps.index('iifname "vm2" jump sub_Outbound')
    assert jumps.index('oifname "vm2" jump sub_Inbound') < jumps.index('oifname "vm2" jump web_Inbound')
    assert 'iifname "peer" jump sub_Outbound' in jumps        # the subnet's every NIC
    assert not any('"peered"' in j or '"nva"' in j for j in jumps)  # the hub is another subnet
    assert max(i for i, j in enumerate(jumps) if j.startswith("iifname")) < \
        min(i for i, j in enumerate(jumps) if j.startswith("oifname"))  # leaving, then entering
    nft_accepts(text)


def test_no_group_leaves_only_the_removal():
    assert compiled() == "table ip vnd_nsg {}\ndelete table ip vnd_nsg\n"


def test_a_rule_that_stands_for_no_address_is_left_out():
    where = nsg.Scope(vnet=P.VNET_SPACE, internet=(), load_balancer=())
    text = fabric_nsg.ruleset([fabric_nsg.Attached(nsg.parse(WEB), nics=("vm1",))], PLAN, where)
    assert "198.18" not in text and "168.63.129.16" not in text


def test_counter_names_that_run_together_are_refused():
    a = fabric_nsg.Attached(nsg.parse(group("a_b", rule("c"))), nics=("vm1",))
    b = fabric_nsg.Attached(nsg.parse(group("a", rule("b_c"))), nics=("vm2",))
    with pytest.raises(fabric_nsg.AttachError, match="nsg_a_b_c"):
        compiled(a, b)


@pytest.fixture
def lab_dir(tmp_path, monkeypatch):
    """apply/delete against a lab directory in tmp_path, nft calls recorded."""
    monkeypatch.setattr(P, "LAB_ROOT", str(tmp_path))
    os.makedirs(PLAN.dir)
    applied: list[str] = []
    monkeypatch.setattr(fabric_nsg, "in_ns", lambda ns, argv, stdin: applied.append(stdin))
    return applied


def test_apply_keeps_groups_and_replaces_one_of_the_same_name(lab_dir):
    fabric_nsg.apply(PLAN, WEB, nics=["vm2"])
    fabric_nsg.apply(PLAN, group("sub"), subnets=["default"])
    fabric_nsg.apply(PLAN, group("web"), nics=["vm1"])
    assert [(a.group.name, a.nics, a.subnets) for a in fabric_nsg.attached(PLAN)] == [
        ("sub", (), ("default",)), ("web", ("vm1",), ())]
    assert 'oifname "vm1" jump web_Inbound' in lab_dir[-1] and '"vm2" jump web' not in lab_dir[-1]
    fabric_nsg.delete(PLAN, "web")
    assert [a.group.name for a in fabric_nsg.attached(PLAN)] == ["sub"]


@pytest.mark.parametrize("nics,subnets,words", [
    (["vm9"], [], "no NIC 'vm9'"), ([], ["spoke"], "no subnet 'spoke'"), ([], [], "to a NIC or a subnet"),
    (["vm2"], [], "NIC 'vm2' already has group 'web'"),
])
def test_bad_attachments_change_nothing(lab_dir, nics, subnets, words):
    fabric_nsg.apply(PLAN, WEB, nics=["vm2"])
    with pytest.raises(fabric_nsg.AttachError, match=words):
        fabric_nsg.apply(PLAN, group("other"), nics, subnets)
    assert [a.group.name for a in fabric_nsg.attached(PLAN)] == ["web"] and len(lab_dir) == 1


def test_a_bad_group_changes_nothing(lab_dir):
    with pytest.raises(nsg.NsgError, match="rule 'x' priority"):
        fabric_nsg.apply(PLAN, group("g", rule("x", priority=1)), nics=["vm1"])
    assert fabric_nsg.attached(PLAN) == [] and lab_dir == []
    with pytest.raises(fabric_nsg.AttachError, match="none"):
        fabric_nsg.delete(PLAN, "g")


# --- route tables ------------------------------------------------------------

def table(*routes: dict) -> dict:
    return {"name": "rt", "properties": {"routes": list(routes)}}


def route(name: str, prefix: str, hop: str, address: str | None = None) -> dict:
    props = {"addressPrefix": prefix, "nextHopType": hop}
    if address:
        props["nextHopIpAddress"] = address
    return {"name": name, "properties": props}


def test_routes_compile_to_the_subnets_table():
    routes = fabric_routes.parse(table(route("hub", "10.4.0.0/16", "VirtualAppliance", "10.4.0.200"),
                                       route("sink", "198.19.0.0/16", "None")))
    assert fabric_routes.route_lines("default", routes) == [
        "route flush table 100",
        "route replace 10.4.0.0/16 via 10.4.0.200 dev nva onlink table 100",
        "route replace blackhole 198.19.0.0/16 table 100"]


def test_every_nic_looks_up_its_subnets_table_first():
    lines = fabric_routes.rule_lines(PLAN)
    assert "rule add iif vm1 lookup 100 pref 100" in lines and "rule add iif peer lookup 100 pref 100" in lines
    assert "rule add iif nva lookup 101 pref 101" in lines


@pytest.mark.parametrize("doc,words", [
    (table(route("r", "10.4.0.0/33", "None")), "route 'r' addressPrefix"),
    (table(route("r", "10.4.0.0/16", "Internet")), "route 'r' nextHopType"),
    (table(route("r", "10.4.0.0/16", "VirtualAppliance")), "route 'r' nextHopIpAddress"),
    (table(route("r", "10.4.0.0/16", "VirtualAppliance", "10.4.0.4")), "no host with IP forwarding"),
    ({"name": "rt"}, "properties.routes"),
])
def test_bad_route_tables_are_refused(doc, words):
    with pytest.raises(fabric_routes.RouteError, match=words):
        fabric_routes.parse(doc)


# --- the plan's other hosts and the fabric's checks ----------------------------

def test_hosts_sit_in_their_subnets():
    assert (str(P.PEERED_VM.interface), str(P.PEERED_VM.gateway)) == ("10.4.0.4/16", "10.4.0.1")
    assert str(P.PEER.gateway) == str(P.GATEWAY)
    assert PLAN.subnet_links("default") == ["vm1", "vm2", "peer"]
    assert PLAN.subnet_links("hub") == ["peered", "nva"]
    assert PLAN.host_ns(P.APPLIANCE) == "vnd-nva"


def test_a_forwarding_nic_is_checked_for_its_mac_only():
    text = fabric.ruleset({"nva": (P.APPLIANCE.mac, None),
                           "vm1": ("00:0d:3a:00:00:01", [ipaddress.IPv4Address("10.3.0.4")])}, [])
    nva = text[text.index("chain nva_in"):text.index("chain vm1_in")]
    assert "nva_bad_mac" in nva and "saddr != @" not in nva and "counter nva_bad_ip" not in text
    assert "counter vm1_bad_ip" in text
