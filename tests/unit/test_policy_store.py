"""Rule sets on disk and their selectors (vnetdp.policy.store), and the
``vnetdp policy`` command as far as it goes without a datapath."""
from __future__ import annotations

import ipaddress
import json

import pytest

from vnetdp import cli
from vnetdp.policy import store as S
from vnetdp.policy.nsg import NsgError

POD = ipaddress.IPv4Address("10.3.1.5")


def member(ns: str = "", pod: str = "", network: str = "", address: ipaddress.IPv4Address = POD) -> S.Member:
    return S.Member(address, ns, pod, network)


def rule_set(name: str, **selectors) -> S.RuleSet:
    return S.RuleSet(name, {"name": name, "properties": {"securityRules": []}}, S.Selectors.parse(**selectors))


DOCKER_NET = "0123456789ab" + "0" * 52


@pytest.mark.parametrize("selectors,error", [
    ({"pods": ["web"]}, "pod selector 'web' is not namespace/name"),
    ({"pods": ["Web/x"]}, "pod selector 'Web/x'"),
    ({"addresses": ["10.3.1.1/33"]}, "address selector '10.3.1.1/33' is not an IPv4"),
    ({"addresses": ["10.3.1.1/24"]}, "has host bits set"),
    ({"docker_networks": ["abc"]}, "Docker network selector 'abc' is not a network ID"),
    ({}, "say which endpoints"),
])
def test_bad_selectors_are_refused_by_name(selectors, error):
    with pytest.raises(S.PolicyError, match=error):
        S.Selectors.parse(**selectors)


def test_the_most_specific_selector_wins():
    sets = [rule_set("default", node_default=True), rule_set("docker", docker_networks=[DOCKER_NET[:12]]),
            rule_set("wide", addresses=["10.3.0.0/16"]), rule_set("narrow", addresses=["10.3.1.0/24"]),
            rule_set("namespace", pods=["shop/*"]), rule_set("pod", pods=["shop/web"])]
    pick = lambda m: S.select(sets, m).name  # noqa: E731
    assert pick(member("shop", "web")) == "pod"
    assert pick(member("shop", "db")) == "namespace"
    assert pick(member("other", "db")) == "narrow"
    assert pick(member(address=ipaddress.IPv4Address("10.3.2.1"))) == "wide"
    assert pick(member(network=f"docker:{DOCKER_NET}", address=ipaddress.IPv4Address("10.9.0.1"))) == "docker"
    assert pick(member(address=ipaddress.IPv4Address("10.9.0.1"))) == "default"
    assert S.select(sets[1:], member(address=ipaddress.IPv4Address("10.9.0.1"))) is None


def test_two_rule_sets_never_claim_one_selector():
    sets = [rule_set("a", pods=["shop/web"], node_default=True)]
    with pytest.raises(S.PolicyError, match="rule set 'a' already selects pod shop/web"):
        S.check_claims(sets, rule_set("b", pods=["shop/web"]))
    with pytest.raises(S.PolicyError, match="already selects node default;"):
        S.check_claims(sets, rule_set("b", node_default=True))
    S.check_claims(sets, rule_set("a", addresses=["10.3.1.0/24"]))   # itself, replaced
    S.check_claims(sets, rule_set("b", pods=["shop/*"]))


def test_rule_sets_and_the_registry_round_trip(tmp_path):
    store = S.Store(str(tmp_path))
    assert not store.has_rule_sets() and store.rule_sets() == []
    rs = rule_set("web", pods=["shop/web"], addresses=["10.3.1.1"])
    store.save(rs)
    assert store.has_rule_sets() and store.get("web") == rs
    assert rs.selectors.addresses == ("10.3.1.1/32",)
    registry = store.registry()
    compiled = S.Compiled(registry.allocate(), "web", 1, ("10.3.0.0/16",), (0, 2), ("a", "b", "c"))
    registry.sets[compiled.id] = compiled
    store.save_registry(registry)
    again = store.registry()
    assert again.sets == {1: compiled} and again.allocate() == 2
    assert again.find(compiled.key) == compiled
    assert store.remove("web") and not store.remove("web") and not store.has_rule_sets()


def test_a_bad_file_is_refused_naming_the_file_the_rule_and_the_field(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"name": "g", "properties": {"securityRules": [
        {"name": "r1", "properties": {"priority": 50, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
                                      "sourceAddressPrefix": "*", "sourcePortRange": "*",
                                      "destinationAddressPrefix": "*", "destinationPortRange": "80"}}]}}))
    with pytest.raises(NsgError, match=r"g\.json: rule 'r1' priority: must be a whole number 100-4096"):
        S.read_document(str(path))


def policy_cli(tmp_path, *args: str) -> int:
    return cli.main(["policy", *args, "--state-dir", str(tmp_path / "state"), "--bpffs-dir", str(tmp_path / "bpf")])


def test_the_command_stores_shows_and_deletes_rule_sets_before_the_node_has_a_datapath(tmp_path, capsys):
    path = tmp_path / "web.json"
    path.write_text(json.dumps({"name": "web", "properties": {"securityRules": []}}))
    assert policy_cli(tmp_path, "apply", str(path)) == 1
    assert "say which endpoints" in capsys.readouterr().err
    assert policy_cli(tmp_path, "apply", str(path), "--pod", "shop/web", "--address", "10.3.1.0/24") == 0
    assert "no datapath on this node yet" in capsys.readouterr().out
    assert policy_cli(tmp_path, "show", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ruleSets"] == [{"name": "web", "revision": 1, "rules": 0,
                                  "selects": "pod shop/web, address 10.3.1.0/24"}]
    assert policy_cli(tmp_path, "apply", str(path), "--node-default") == 0
    capsys.readouterr()
    assert policy_cli(tmp_path, "show") == 0
    assert "rule set web (revision 2, 0 rules): node default" in capsys.readouterr().out
    assert policy_cli(tmp_path, "delete", "web") == 0
    assert policy_cli(tmp_path, "delete", "web") == 1
    assert "no rule set 'web'" in capsys.readouterr().err
