"""Public IPs in the lab, without a lab: the plan's one-to-one addresses,
the metadata document the VM's server answers with (and when it refuses),
assigning and removing a public IP (documents and the fabric's elements),
and the fabric's rules passing nft's check mode."""
from __future__ import annotations

import ipaddress
import json

import pytest

from test_lab_fabric_features import nft_accepts
from vnetdp import public_ips
from vnetdp.lab import fabric, fabric_public_ips, nmagent
from vnetdp.lab import plan as P

IP = ipaddress.IPv4Address


def test_public_ips_are_one_to_one_in_the_internet_away_from_its_host():
    assert P.public_ip(IP("10.3.2.7")) == IP("198.19.2.7")
    assert P.PUBLIC_IPS.subnet_of(P.INTERNET) and P.INET_IP not in P.PUBLIC_IPS
    with pytest.raises(ValueError):
        P.public_ip(IP("10.4.0.4"))


@pytest.mark.parametrize("path,headers,answer", [
    (nmagent.PATH, {}, (200, "application/xml", nmagent.INTERFACES_FILE)),
    (f"{nmagent.METADATA_PATH}?{nmagent.METADATA_QUERY}", {"Metadata": "true"},
     (200, "application/json", nmagent.METADATA_FILE)),
    (f"{nmagent.METADATA_PATH}?{nmagent.METADATA_QUERY}", {}, (400, "", None)),   # IMDS wants its header
    (nmagent.METADATA_PATH, {"Metadata": "true"}, (400, "", None)),                # and an api-version
    ("/metadata/instance", {"Metadata": "true"}, (404, "", None)),
])
def test_the_vm_server_answers_as_the_host_agent_and_imds_do(path, headers, answer):
    assert nmagent._document(path, headers) == answer


@pytest.fixture
def lab_dir(tmp_path, monkeypatch) -> tuple[P.Plan, list[str]]:
    """A plan whose VMs' documents are written (as Lab.up writes them) in a
    temporary lab directory; what would go to the fabric's nft is collected."""
    monkeypatch.setattr(P, "LAB_ROOT", str(tmp_path))
    plan = P.Plan("t", vms=2, pool=4)
    for vm in plan.all_vms:
        (tmp_path / "t" / vm.name).mkdir(parents=True)
        nmagent.write_documents(f"{plan.dir}/{vm.name}", vm.mac, P.VNET, vm.primary, vm.secondaries(plan.pool))
    sent: list[str] = []
    monkeypatch.setattr(fabric_public_ips, "in_ns", lambda ns, argv, stdin: sent.append(stdin))
    return plan, sent


def test_assigning_maps_in_the_fabric_and_lists_it_in_the_vms_document(lab_dir):
    plan, sent = lab_dir
    assert fabric_public_ips.assign(plan, IP("10.3.2.3")) == IP("198.19.2.3")
    assert fabric_public_ips.assigned(plan) == {IP("10.3.2.3"): IP("198.19.2.3")}
    assert sent[-1] == fabric_public_ips.ruleset({IP("10.3.2.3"): IP("198.19.2.3")})
    with open(f"{plan.dir}/vm2/{nmagent.METADATA_FILE}") as f:
        assert public_ips.parse(f.read()) == {IP("10.3.2.3"): IP("198.19.2.3")}   # what vnetdp reads
    fabric_public_ips.unassign(plan, IP("10.3.2.3"))
    assert fabric_public_ips.assigned(plan) == {}
    assert sent[-1] == fabric_public_ips.ruleset({})


@pytest.mark.parametrize("address,error", [("10.3.0.5", "no secondary address"),   # VM 2's primary
                                           ("10.3.2.9", "no secondary address"),   # beyond its pool
                                           ("10.3.0.100", "no secondary address")])
def test_only_secondary_addresses_of_lab_vms_get_one(lab_dir, address, error):
    plan, sent = lab_dir
    with pytest.raises(fabric_public_ips.PublicIpError, match=error):
        fabric_public_ips.assign(plan, IP(address))
    assert sent == []


def test_removing_a_public_ip_that_is_not_there_is_an_error(lab_dir):
    with pytest.raises(fabric_public_ips.PublicIpError, match="has no public IP"):
        fabric_public_ips.unassign(lab_dir[0], IP("10.3.1.1"))


def test_the_fabric_lets_public_ips_out_and_translates_them_both_ways():
    members = {"vm1": ("00:0d:3a:00:00:01", [IP("10.3.0.4"), IP("10.3.1.1")])}
    text = fabric.ruleset(members, [IP("10.3.0.4")])
    assert 'oifname "inet" ip saddr != @primaries ip saddr != @public_sources counter name "inet_not_primary" drop' \
        in text
    assert "nat" not in text   # no conntrack for the fabric until it translates something
    mapped = fabric_public_ips.ruleset({IP("10.3.1.1"): IP("198.19.1.1"), IP("10.3.1.2"): IP("198.19.1.2")})
    assert "add element ip vnd_fabric_fwd public_sources { 10.3.1.1, 10.3.1.2 }" in mapped
    assert 'iifname "inet" dnat to ip daddr map { 198.19.1.1 : 10.3.1.1, 198.19.1.2 : 10.3.1.2 }' in mapped
    assert 'oifname "inet" snat to ip saddr map { 10.3.1.1 : 198.19.1.1, 10.3.1.2 : 198.19.1.2 }' in mapped
    nft_accepts(text + mapped)
    assert fabric_public_ips.ruleset({}) == ("flush set ip vnd_fabric_fwd public_sources\n"
                                             "table ip vnd_public_ip {}\ndelete table ip vnd_public_ip\n")
    nft_accepts(text + fabric_public_ips.ruleset({}))


def test_the_documents_say_what_the_host_agent_and_imds_say():
    vm = P.Plan().vm(1)
    doc = nmagent.metadata_document(vm.mac, P.VNET, [vm.primary, *vm.secondaries(2)])
    [interface] = doc["interface"]
    assert interface["macAddress"] == "000D3A000001"
    assert interface["ipv4"]["subnet"] == [{"address": "10.3.0.0", "prefix": "16"}]
    assert [e["privateIpAddress"] for e in interface["ipv4"]["ipAddress"]] == ["10.3.0.4", "10.3.1.1", "10.3.1.2"]
    assert public_ips.parse(json.dumps(doc)) == {}
