"""The lab's internal load balancer without a lab: the cloud's document read
(and refused with errors that name the object and field), the fabric's table
for each health, passing nft's check mode, and the probe process's turns on
a fake clock."""
from __future__ import annotations

import copy
import ipaddress

import pytest

from test_lab_fabric_features import nft_accepts
from vnetdp.lab import fabric_lb, lb_probe
from vnetdp.lab import plan as P

IP = ipaddress.IPv4Address
A, B = IP("10.3.1.1"), IP("10.3.2.1")
ARM = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/ilb"
DOC = {"name": "ilb", "properties": {
    "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "10.3.0.200"}}],
    "backendAddressPools": [{"name": "pods", "properties": {"loadBalancerBackendAddresses": [
        {"name": "a", "properties": {"ipAddress": str(A)}}, {"name": "b", "properties": {"ipAddress": str(B)}}]}}],
    "probes": [{"name": "tcp-8080", "properties": {"protocol": "Tcp", "port": 8080, "intervalInSeconds": 1}}],
    "loadBalancingRules": [{"name": "web", "properties": {
        "protocol": "Tcp", "frontendPort": 80, "backendPort": 8080, "loadDistribution": "Default",
        "frontendIPConfiguration": {"id": f"{ARM}/frontendIPConfigurations/fe"},
        "backendAddressPool": {"id": "pods"}, "probe": {"id": "tcp-8080"}}}]}}


def changed(path: str, value) -> dict:
    """DOC with the field at ``path`` (keys and list indexes, '/'-separated) set to ``value``."""
    doc = copy.deepcopy(DOC)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    target = doc
    for p in parents:
        target = target[p]
    target[last] = value
    return doc


def test_the_clouds_document_reads_with_references_by_name_or_resource_id():
    lb = fabric_lb.parse(DOC)
    probe = fabric_lb.Probe("tcp-8080", 8080, 1, 1)
    assert lb == fabric_lb.LoadBalancer("ilb", (fabric_lb.Rule("web", P.LB_FRONTEND, 80, 8080, (A, B), probe),))
    assert lb.targets() == {(A, 8080): probe, (B, 8080): probe}


def test_the_frontend_address_defaults_to_the_labs_and_the_backend_port_to_the_frontends():
    doc = changed("properties/frontendIPConfigurations/0/properties", {})
    del doc["properties"]["loadBalancingRules"][0]["properties"]["backendPort"]
    [rule] = fabric_lb.parse(doc).rules
    assert (rule.frontend, rule.backend_port) == (P.LB_FRONTEND, 80)


@pytest.mark.parametrize("path,value,error", [
    ("properties/frontendIPConfigurations/0/properties/privateIPAddress", "10.3.0.201",
     "frontend 'fe' privateIPAddress: the lab's frontend address is 10.3.0.200"),
    ("properties/loadBalancingRules/0/properties/backendAddressPool", {"id": "nope"},
     "rule 'web' backendAddressPool: {'id': 'nope'} names none of \\['pods'\\]"),
    ("properties/probes/0/properties/protocol", "Http", "probe 'tcp-8080' protocol: the lab balances and probes Tcp"),
    ("properties/loadBalancingRules/0/properties/frontendPort", 0, "rule 'web' frontendPort: must be a whole number"),
    ("properties/backendAddressPools/0/properties/loadBalancerBackendAddresses/0/properties/ipAddress", "198.18.0.1",
     "backend 'a': 198.18.0.1 is not in the virtual network"),
    ("properties/loadBalancingRules", [], "no loadBalancingRules"),
    ("name", "bad name", "a load balancer is an object with a name"),
])
def test_a_bad_document_is_refused_naming_what_is_wrong(path, value, error):
    with pytest.raises(fabric_lb.LbError, match=error):
        fabric_lb.parse(changed(path, value))


def test_two_rules_on_one_frontend_port_are_refused():
    doc = copy.deepcopy(DOC)
    doc["properties"]["loadBalancingRules"].append({**doc["properties"]["loadBalancingRules"][0], "name": "again"})
    with pytest.raises(fabric_lb.LbError, match="another rule already balances 10.3.0.200:80"):
        fabric_lb.parse(doc)


@pytest.mark.parametrize("health,expected", [
    ({}, "dnat ip to numgen inc mod 2 map { 0 : 10.3.1.1 . 8080, 1 : 10.3.2.1 . 8080 }"),
    ({(A, 8080): True, (B, 8080): False}, "dnat ip to numgen inc mod 1 map { 0 : 10.3.1.1 . 8080 }"),
    ({(A, 8080): False, (B, 8080): False}, 'counter name "lb_web_no_backend" drop'),
])
def test_the_table_spreads_new_connections_over_the_healthy_backends_only(health, expected):
    text = fabric_lb.ruleset(fabric_lb.parse(DOC), health)
    assert f'    iifname != "inet" ip daddr 10.3.0.200 tcp dport 80 {expected}' in text.splitlines()
    assert "snat" not in text and "masquerade" not in text   # the backend sees the client
    nft_accepts(text)


def test_no_load_balancer_leaves_only_the_removal():
    assert fabric_lb.ruleset(None, {}) == "table ip vnd_lb {}\ndelete table ip vnd_lb\n"


def test_the_probe_takes_a_backend_out_after_its_failures_and_back_after_a_success(monkeypatch):
    """B fails from its third probe on and answers again at its sixth; two
    failures in a row take it out. The process ends when the load balancer goes."""
    doc = changed("properties/probes/0/properties/numberOfProbes", 2)
    turns = iter([fabric_lb.parse(doc)] * 7 + [None])
    clock, probes, enforced = [0.0], {A: 0, B: 0}, []

    def answers(address, port, timeout):
        probes[address] += 1
        return address == A or not 3 <= probes[address] <= 5

    monkeypatch.setattr(lb_probe, "answers", answers)
    monkeypatch.setattr(lb_probe.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lb_probe.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(fabric_lb, "applied", lambda plan: next(turns))
    monkeypatch.setattr(fabric_lb, "enforce", lambda plan, lb, health: enforced.append(
        (probes[B], [str(b) for b in fabric_lb.healthy(lb.rules[0], health)])))
    monkeypatch.setattr(fabric_lb, "record_health", lambda plan, health: None)
    lb_probe.run(P.Plan("t"))
    assert enforced == [(1, ["10.3.1.1", "10.3.2.1"]), (4, ["10.3.1.1"]), (6, ["10.3.1.1", "10.3.2.1"])]
    assert clock[0] == 7.0   # one probe of each backend a second


def test_the_one_rule_document_the_demo_and_tests_use_is_the_clouds_shape():
    lb = fabric_lb.parse(fabric_lb.document("demo", [str(A), str(B)], 80, 7100))
    assert lb == fabric_lb.LoadBalancer("demo", (fabric_lb.Rule(
        "tcp", P.LB_FRONTEND, 80, 7100, (A, B), fabric_lb.Probe("tcp", 7100, 1, 1)),))
