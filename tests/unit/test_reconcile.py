"""``vnetdp reconcile``'s comparison on fake nodes: every kind of difference
between the records, IPAM, the endpoint map, the host veths, the pins and
the attachments, and a node that agrees with itself reports nothing."""
from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest

from vnetdp import naming
from vnetdp.ipam.store import Allocation
from vnetdp.network.records import PodRecord
from vnetdp.ops import reconcile as R

IDS = {"from_container": 11, "to_container": 12, "from_nic": 13, "from_nic_xdp": 14, "pod_xdp_pass": 15}
#: what the NIC carries by nic_attach: from_nic at tc ingress, and with XDP from_nic_xdp in front of it
NIC_PROGRAMS = {"tc": {"ingress": "from_nic"}, "xdp": {"ingress": "from_nic", "xdp": "from_nic_xdp"}}


def record(n: int, ipam: str = "vnetdp-ipam") -> PodRecord:
    return PodRecord(f"pod{n}", "eth0", f"/run/netns/pod{n}", f"10.3.2.{n}", ipam, "10.3.0.0/16", "10.3.0.1",
                     network="vnetdp", host_mac=f"02:00:00:00:00:{n:02x}", pod_mac=f"02:00:00:00:01:{n:02x}")


def host(n: int) -> str:
    return naming.host_ifname(f"pod{n}", "eth0")


def healthy(*ns: int, nic_attach: str = "tc") -> R.Observed:
    """A node whose pods ``ns`` are all as ADD left them."""
    hooks = NIC_PROGRAMS[nic_attach]
    o = R.Observed(nic_attach=nic_attach, programs=dict(IDS), build="b1", builds=["b1"],
                   nic=R.Nic("eth0", 2, {hook: IDS[prog] for hook, prog in hooks.items()}),
                   allocations=[], pins=[f"{hook}-eth0" for hook in hooks])
    for n in ns:
        r = record(n)
        o.records.append(r)
        o.allocations.append(Allocation(r.container_id, r.ifname, r.address, r.subnet, r.gateway, 0.0, "vnetdp"))
        o.veths[host(n)] = R.Veth(host(n), 100 + n, r.host_mac)
        o.endpoints[ipaddress.IPv4Address(r.address)] = R.MapEntry(100 + n, r.pod_mac, r.host_mac)
        o.attachments[(host(n), "ingress")] = IDS["from_container"]
        o.attachments[(host(n), "egress")] = IDS["to_container"]
        o.netns_alive[r.netns] = True
        if nic_attach == "xdp":
            o.pod_xdp[host(n)] = IDS["pod_xdp_pass"]
            o.pins.append(f"podxdp-{host(n)}")
    return o


def kinds(o: R.Observed) -> list[tuple[str, str]]:
    return [(d.kind, d.subject) for d in R.differences(o)]


@pytest.mark.parametrize("nic_attach", ["tc", "xdp"])
def test_a_node_that_agrees_with_itself_is_clean(nic_attach):
    assert kinds(healthy(1, 2, 3, nic_attach=nic_attach)) == []
    assert R.Result(R.differences(healthy(1))).clean


def test_the_damage_of_the_lab_test_is_found_and_each_repair_named():
    """A deleted map entry, a detached program and a stray veth: exactly those three."""
    o = healthy(1, 2)
    del o.endpoints[ipaddress.IPv4Address("10.3.2.1")]
    o.attachments[(host(2), "egress")] = None
    o.veths["vnd0123456789a"] = R.Veth("vnd0123456789a", 300, "02:99:00:00:00:01")
    found = R.differences(o)
    assert [(d.kind, d.subject) for d in found] == [
        ("map-entry-missing", "10.3.2.1"), ("program-missing", host(2)), ("veth-stray", "vnd0123456789a")]
    assert all(d.repair for d in found)
    assert found[1].hook == "egress" and "to_container" in found[1].detail
    result = R.Result(found)
    assert not result.clean
    assert json.loads(json.dumps(result.as_dict()))["counts"] == \
        {"map-entry-missing": 1, "program-missing": 1, "veth-stray": 1}


def test_maps_that_cannot_be_opened_are_reported_and_the_rest_compared():
    o = healthy(1)
    o.maps_error, o.endpoints = "the maps cannot be opened: no such file", {}
    assert kinds(o) == [("maps-unreadable", "maps")]


def test_map_entries_that_disagree_with_the_live_veth_or_no_record_holds():
    o = healthy(1, 2)
    o.endpoints[ipaddress.IPv4Address("10.3.2.1")] = R.MapEntry(999, record(1).pod_mac, record(1).host_mac)
    o.endpoints[ipaddress.IPv4Address("10.3.2.9")] = R.MapEntry(101, "02:00:00:00:00:09", "02:00:00:00:00:09")
    found = R.differences(o)
    assert [(d.kind, d.subject) for d in found] == [("map-entry-wrong", "10.3.2.1"), ("map-entry-stray", "10.3.2.9")]
    assert "ifindex 999, the veth's is 101" in found[0].detail
    assert host(1) in found[1].detail  # the stray names the veth its ifindex belongs to


def test_programs_of_another_build_are_stale_and_replaced_in_place():
    o = healthy(1)
    o.attachments[(host(1), "ingress")] = 77
    o.nic = R.Nic("eth0", 2, {"ingress": 78})
    assert kinds(o) == [("program-stale", host(1)), ("nic-program-stale", "eth0")]
    o.nic = R.Nic("eth0", 2, {"ingress": None, "xdp": 79})
    assert ("nic-program-missing", "eth0") in kinds(o) and ("nic-program-stray", "eth0") in kinds(o)


def test_with_xdp_the_nic_carries_both_programs_and_each_hook_is_judged():
    o = healthy(1, nic_attach="xdp")
    assert o.nic.attached == {"ingress": IDS["from_nic"], "xdp": IDS["from_nic_xdp"]} and kinds(o) == []
    o.nic.attached["ingress"] = None  # tc's from_nic gone behind XDP: shaped pods' frames go nowhere
    [d] = R.differences(o)
    assert (d.kind, d.subject, d.hook) == ("nic-program-missing", "eth0", "ingress")
    assert d.detail == "from_nic is not attached at ingress of eth0" and "node configure" in d.repair
    o.nic.attached.update(ingress=IDS["from_nic"], xdp=78)
    [d] = R.differences(o)
    assert (d.kind, d.hook) == ("nic-program-stale", "xdp") and "from_nic_xdp is 14" in d.detail


def test_with_tc_a_program_at_xdp_is_stray():
    o = healthy(1)
    o.nic.attached["xdp"] = IDS["from_nic_xdp"]
    o.pins.append("xdp-eth0")
    [d] = R.differences(o)  # the pin goes with the program: no pin-stray besides
    assert (d.kind, d.subject, d.hook, d.repair) == ("nic-program-stray", "eth0", "xdp", "detach it")


def test_pods_whose_netns_and_veth_are_gone_are_deleted_unless_their_ipam_is_another_plugins():
    o = healthy(1, 2)
    for n in (1, 2):
        del o.veths[host(n)]
        o.netns_alive[record(n).netns] = False
    o.records[1] = record(2, ipam="host-local")
    o.allocations.pop()
    found = R.differences(o)
    assert [(d.kind, d.subject, bool(d.repair)) for d in found] == [
        ("pod-gone", "10.3.2.1", True), ("pod-gone", "10.3.2.2", False)]
    assert "host-local" in found[1].detail


def test_a_docker_endpoint_is_never_deleted_and_may_have_no_netns_yet():
    o = healthy(1)
    r = dataclasses.replace(record(2), container_id="ep2", netns="", ipam_type="vnetdp-docker", network="docker:n1")
    o.records.append(r)
    name = naming.host_ifname("ep2", "eth0")
    o.veths[name] = R.Veth(name, 102, r.host_mac)
    o.endpoints[ipaddress.IPv4Address(r.address)] = R.MapEntry(102, r.pod_mac, r.host_mac)
    o.attachments.update({(name, "ingress"): IDS["from_container"], (name, "egress"): IDS["to_container"]})
    assert kinds(o) == []
    del o.veths[name]
    assert [(d.kind, d.repair) for d in R.differences(o)] == [("pod-gone", None)]


def test_a_veth_missing_under_a_live_netns_is_recreated():
    o = healthy(1)
    del o.veths[host(1)]
    assert [(d.kind, bool(d.repair)) for d in R.differences(o)] == [("veth-missing", True)]


def test_pins_no_record_or_veth_explains_are_strays_the_nic_pins_are_not():
    o = healthy(1)
    o.nic = R.Nic("eth0.5", 2, {"ingress": IDS["from_nic"]})
    o.pins = ["ingress-eth0~5", f"ingress-{host(1)}", "egress-vnd00000000000", "ingress-vnd00000000000~new",
              "xdp-eth0~5", "garbage"]
    found = R.differences(o)
    assert [(d.kind, d.subject) for d in found] == [
        ("pin-stray", "egress-vnd00000000000"), ("pin-stray", "garbage"),
        ("pin-stray", "ingress-vnd00000000000~new"), ("pin-stray", "xdp-eth0~5")]
    assert found[-1].hook == "xdp"  # a NIC pin at the wrong hook: detached, not just unpinned


def test_ipam_and_records_must_agree():
    o = healthy(1, 2, 3)
    o.allocations = [a for a in o.allocations if a.address != "10.3.2.1"]          # lost allocation
    o.allocations.append(Allocation("gone", "eth0", "10.3.2.7", "10.3.0.0/16", "10.3.0.1", 0.0, "vnetdp"))
    o.allocations = [a if a.address != "10.3.2.3" else Allocation("pod3", "eth0", "10.3.2.8", "", "", 0.0)
                     for a in o.allocations]                                        # different address
    assert [(d.kind, d.subject, bool(d.repair)) for d in R.differences(o)] == [
        ("allocation-stray", "10.3.2.7", True), ("allocation-missing", "10.3.2.1", True),
        ("allocation-conflict", "10.3.2.3", False)]
    o.allocations.append(Allocation("other", "eth0", "10.3.2.9", "", "", 0.0, "bridge-net"))  # another plugin's
    found = {d.subject: d for d in R.differences(o)}
    assert found["10.3.2.9"].kind == "allocation-stray" and found["10.3.2.9"].repair is None
    assert "bridge-net" in found["10.3.2.9"].detail
    try:
        docker = Allocation("", "", "10.3.2.10", "", "", 0.0, "docker:n1", owner="docker")
    except TypeError:  # a store from before owners
        docker = None
    if docker is not None:
        o.allocations.append(docker)  # asked for by Docker before it names the endpoint: not ours to judge
        assert "10.3.2.10" not in {d.subject for d in R.differences(o)}
    o.allocations, o.ipam_error = None, "IPAM state is corrupt"
    assert [(d.kind, d.repair) for d in R.differences(o)] == [("ipam-unreadable", None)]


def test_builds_other_than_current_and_previous_are_strays_and_no_build_is_reported():
    o = healthy(1)
    o.builds, o.previous = ["b0", "b1", "bx"], "b0"
    assert kinds(o) == [("build-stray", "bx")]
    o = healthy()
    o.build, o.builds, o.programs, o.nic = None, [], {}, None
    assert kinds(o) == [("programs-not-loaded", "programs")]


def test_other_endpoint_problems_are_reported_and_a_missing_route_is_fixable():
    o = healthy(1)
    o.problems[host(1)] = [f"no route to 10.3.2.1 via {host(1)}", "no default route in /run/netns/pod1"]
    found = R.differences(o)
    assert [(d.kind, bool(d.repair)) for d in found] == [("route-missing", True), ("endpoint-problem", False)]


def test_render_says_what_was_done():
    o = healthy(1)
    o.veths["vnd0123456789a"] = R.Veth("vnd0123456789a", 300, "02:99:00:00:00:01")
    found = R.differences(o)
    text = R.render(R.Result(found))
    assert "veth-stray" in text and "can fix: delete it" in text and "1 differences, 1 fixable with --fix" in text
    found[0].status = "fixed"
    text = R.render(R.Result(found, remaining=[], fixed=True))
    assert "-> fixed" in text and "a second look finds the node clean" in text
    assert R.render(R.Result([])).startswith("clean")


def test_an_endpoint_whose_public_ip_came_or_went_has_its_flag_set_or_cleared():
    """The metadata document gives pod 1 a public IP and took pod 2's away."""
    from vnetdp.datapath import maps as M

    o = healthy(1, 2, 3)
    o.public_ips = {ipaddress.IPv4Address("10.3.2.1"): ipaddress.IPv4Address("198.19.2.1"),
                    ipaddress.IPv4Address("10.3.2.3"): ipaddress.IPv4Address("198.19.2.3")}
    for n, flags in ((2, M.EP_PUBLIC_IP), (3, M.EP_PUBLIC_IP)):
        address = ipaddress.IPv4Address(f"10.3.2.{n}")
        o.endpoints[address] = dataclasses.replace(o.endpoints[address], flags=flags)
    found = R.differences(o)
    assert [(d.kind, d.subject, d.repair) for d in found] == [
        ("public-ip-flag", "10.3.2.1", "set the endpoint's public-IP flag"),
        ("public-ip-flag", "10.3.2.2", "clear the endpoint's public-IP flag")]
    assert "198.19.2.1" in found[0].detail
