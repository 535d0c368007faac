"""Node policy (SPEC §11) on scapy frames: rule sets applied through the
control plane (vnetdp.policy.enforce) and enforced by from_container,
from_nic (tc and XDP) and to_container. Allow and deny, priority, port
ranges, prefixes and tags, both directions, replies of allowed flows, the
flow table full, and endpoints without a rule set untouched."""
from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether

from pkt_harness import (GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT,
                         TC_ACT_SHOT, XDP_DROP, XDP_REDIRECT, empty_pinned, metric)
from vnetdp.datapath import maps as M
from vnetdp.datapath import policy_flows, snat, syscall
from vnetdp.datapath import policy_maps as PM
from vnetdp.policy import enforce, report
from vnetdp.policy.store import PolicyError, Selectors

A, B = POD_A["ep"], POD_B["ep"]
PEER, INET = "10.3.0.100", "198.18.0.1"
NIC_HOOKS = {"from_nic": (TC_ACT_REDIRECT, TC_ACT_SHOT), "from_nic_xdp": (XDP_REDIRECT, XDP_DROP)}


def rule(name: str, priority: int, direction: str = "Inbound", access: str = "Deny", protocol: str = "Tcp",
         source: str = "*", destination: str = "*", dports: str = "*", sports: str = "*") -> dict:
    return {"name": name, "properties": {
        "priority": priority, "direction": direction, "access": access, "protocol": protocol,
        "sourceAddressPrefix": source, "destinationAddressPrefix": destination,
        "sourcePortRange": sports, "destinationPortRange": dports}}


class Policy:
    """The node's policy in a test: ``policy(*rules, pods=(POD_A,))`` applies
    a group to those pods' addresses."""

    def __init__(self, state: str, maps: M.Maps) -> None:
        self.state, self.maps = state, maps

    def __call__(self, *rules: dict, pods=(POD_A,), name: str = "g") -> enforce.SyncReport:
        doc = {"name": name, "properties": {"securityRules": list(rules)}}
        return enforce.apply(self.state, self.maps.dir, doc,
                             Selectors(addresses=tuple(f"{p['ip']}/32" for p in pods)))

    def drops(self) -> dict[tuple[str, str, str], int]:
        """Packets denied, by (pod address, direction, rule name), as policy show has them."""
        found = report.show(self.state, self.maps.dir)
        return {(d["address"], d["direction"], d["rule"]): d["packets"] for d in found["drops"]}


@pytest.fixture
def policy(maps, tmp_path):
    """The test's Policy; the policy maps are emptied afterwards."""
    yield Policy(str(tmp_path), maps)
    with PM.PolicyMaps(maps.dir) as pm:
        for ip in pm.endpoint_sets():
            pm.delete_endpoint_set(ip)
        for set_id in pm.set_ids():
            pm.delete_set(set_id)
        for flow in pm.flows():
            pm.delete_flow(flow)
        pm.forget_drops(lambda d: True)
        pm.set_enabled(False)
    empty_pinned(f"{maps.dir}/policy_frags", "struct vnd_policy_frag_key", "__u64")


def from_nic(src: str, l4, dst: str = POD_A["ip"], **ip):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src=src, dst=dst, ttl=50, **ip) / l4


def from_a(dst: str, l4, src: str = POD_A["ip"], **ip):
    return Ether(src=A.pod_mac, dst=A.host_mac) / IP(src=src, dst=dst, **ip) / l4


# --- endpoints without a rule set -------------------------------------------

def test_without_rule_sets_nothing_changes_and_the_switch_stays_off(maps, run):
    r = run("from_container", from_a(PEER, TCP(sport=40000, dport=80)))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    with PM.PolicyMaps(maps.dir) as pm:
        assert not pm.enabled() and not pm.flows()


def test_a_pod_without_a_rule_set_is_untouched_when_another_has_one(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"), pods=(POD_B,))
    r = run("from_nic", from_nic(PEER, TCP(sport=40000, dport=80)))
    assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, A.ifindex)
    with PM.PolicyMaps(maps.dir) as pm:
        assert pm.enabled() and not pm.flows()


# --- inbound: from the NIC (tc and XDP) --------------------------------------

@pytest.mark.parametrize("prog", NIC_HOOKS)
def test_a_deny_rule_drops_counts_and_names_the_rule_others_pass(maps, run, policy, prog):
    forward, drop = NIC_HOOKS[prog]
    policy(rule("deny-8080", 100, dports="8080"))
    assert run(prog, from_nic(PEER, TCP(sport=40000, dport=8080, flags="S"))).retval == drop
    assert metric(maps, A.ifindex, "DROP_POLICY") == 1
    assert policy.drops() == {(POD_A["ip"], "Inbound", "deny-8080"): 1}
    r = run(prog, from_nic(PEER, TCP(sport=40000, dport=80, flags="S")))
    assert (r.retval, r.redirect_ifindex) == (forward, A.ifindex)
    shown = report.render(report.show(policy.state, maps.dir))
    assert f"endpoint {POD_A['ip']}: g (set " in shown
    assert f"denied {POD_A['ip']} Inbound  g/deny-8080: 1 packets, 54 bytes" in shown
    assert "1 flows kept" in shown


def test_the_first_rule_by_priority_decides(maps, run, policy):
    policy(rule("allow-8080", 100, access="Allow", dports="8080"), rule("deny-8000s", 200, dports="8000-8999"))
    assert run("from_nic", from_nic(INET, TCP(sport=1, dport=8080))).retval == TC_ACT_REDIRECT
    assert run("from_nic", from_nic(INET, TCP(sport=1, dport=8081))).retval == TC_ACT_SHOT
    assert policy.drops() == {(POD_A["ip"], "Inbound", "deny-8000s"): 1}


@pytest.mark.parametrize("dport,passes", [(7999, True), (8000, False), (8500, False), (8999, False), (9000, True)])
def test_port_ranges_hold_their_ends(maps, run, policy, dport, passes):
    policy(rule("deny-8000s", 100, protocol="Udp", dports="8000-8999"))
    r = run("from_nic", from_nic(PEER, UDP(sport=5000, dport=dport)))
    assert r.retval == (TC_ACT_REDIRECT if passes else TC_ACT_SHOT)


def test_source_ports_prefixes_and_tags(maps, run, policy):
    policy(rule("dns-from-ns", 100, protocol="Udp", access="Allow", source="198.18.0.0/24", sports="53"),
           rule("ssh-vnet-only", 110, dports="22", source="Internet"))
    ok = lambda src, l4: run("from_nic", from_nic(src, l4)).retval == TC_ACT_REDIRECT  # noqa: E731
    assert ok("198.18.0.9", UDP(sport=53, dport=40000))          # the rule
    assert not ok("198.18.0.9", UDP(sport=54, dport=40000))      # another source port: DenyAllInBound
    assert not ok("198.18.1.9", UDP(sport=53, dport=40000))      # outside the prefix: DenyAllInBound
    assert not ok("198.18.1.9", TCP(sport=1, dport=22))          # Internet: ssh-vnet-only
    assert ok(PEER, TCP(sport=1, dport=22))                      # VirtualNetwork: AllowVnetInBound
    assert policy.drops() == {(POD_A["ip"], "Inbound", "DenyAllInBound"): 2,
                           (POD_A["ip"], "Inbound", "ssh-vnet-only"): 1}


# --- outbound, and replies of allowed flows ------------------------------------

def test_outbound_rules_decide_what_a_pod_sends_before_snat(maps, run, policy):
    policy(rule("no-db", 100, "Outbound", destination="10.3.5.0/24", dports="5432"),
           rule("no-inet-udp", 110, "Outbound", protocol="Udp", destination="Internet"))
    assert run("from_container", from_a("10.3.5.9", TCP(sport=40000, dport=5432))).retval == TC_ACT_SHOT
    assert run("from_container", from_a(INET, UDP(sport=40000, dport=53))).retval == TC_ACT_SHOT
    assert not maps.snat_entries()                                # denied before any translation
    r = run("from_container", from_a(INET, TCP(sport=40000, dport=443)))
    assert (r.retval, r.frame[IP].src) == (TC_ACT_REDIRECT, PRIMARY)
    assert metric(maps, A.ifindex, "DROP_POLICY") == 2
    assert policy.drops() == {(POD_A["ip"], "Outbound", "no-db"): 1, (POD_A["ip"], "Outbound", "no-inet-udp"): 1}


def test_replies_of_allowed_flows_pass_whatever_the_other_directions_rules_say(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"))
    r = run("from_container", from_a(INET, TCP(sport=40000, dport=443, flags="S")))
    nat_port = r.frame[TCP].sport
    reply = from_nic(INET, TCP(sport=443, dport=nat_port, flags="SA"), dst=PRIMARY)
    r = run("from_nic", reply)                                    # reverse-translated, then a kept flow
    assert (r.retval, r.redirect_ifindex, r.frame[IP].dst) == (TC_ACT_REDIRECT, A.ifindex, POD_A["ip"])
    run("from_container", from_a(PEER, UDP(sport=5000, dport=53)))
    assert run("from_nic_xdp", from_nic(PEER, UDP(sport=53, dport=5000))).retval == XDP_REDIRECT
    assert run("from_nic", from_nic(PEER, UDP(sport=53, dport=5001))).retval == TC_ACT_SHOT  # not that flow
    with PM.PolicyMaps(maps.dir) as pm:
        flows = {(f.remote_port, f.direction, f.replied) for f in pm.flows()}
    assert flows == {(443, PM.OUTBOUND, True), (53, PM.OUTBOUND, True)}


def test_an_inbound_flow_lets_the_pods_replies_out_past_its_outbound_rules(maps, run, policy):
    policy(rule("allow-web", 100, access="Allow", dports="80"),
           rule("deny-all-out", 100, "Outbound", protocol="*"))
    assert run("from_nic", from_nic(INET, TCP(sport=33000, dport=80, flags="S"))).retval == TC_ACT_REDIRECT
    assert run("from_container", from_a(INET, TCP(sport=80, dport=33000, flags="SA"))).retval == TC_ACT_REDIRECT
    assert run("from_container", from_a(INET, TCP(sport=80, dport=33001, flags="SA"))).retval == TC_ACT_SHOT


def test_icmp_errors_about_a_kept_flow_pass_others_meet_the_rules(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"))
    sent = IP(src=POD_A["ip"], dst="10.3.9.9") / UDP(sport=5000, dport=53)
    run("from_container", from_a("10.3.9.9", UDP(sport=5000, dport=53)))
    error = ICMP(type=3, code=4) / IPerror(bytes(sent)[:28])
    assert run("from_nic", from_nic("10.3.0.1", error)).retval == TC_ACT_REDIRECT
    other = ICMP(type=3, code=4) / IPerror(src=POD_A["ip"], dst="10.3.9.9") / UDPerror(sport=5001, dport=53)
    assert run("from_nic", from_nic("10.3.0.1", other)).retval == TC_ACT_SHOT
    spoofed = ICMP(type=3, code=4) / IPerror(src=POD_B["ip"], dst="10.3.9.9") / UDPerror(sport=5000, dport=53)
    assert run("from_nic", from_nic("10.3.0.1", spoofed)).retval == TC_ACT_SHOT


def test_a_syn_on_a_closed_flow_meets_the_rules_again(maps, run, policy):
    policy(rule("deny-all-out", 100, "Outbound", protocol="*"))
    assert run("from_nic", from_nic(PEER, TCP(sport=33000, dport=80, flags="S"))).retval == TC_ACT_REDIRECT
    assert run("from_container", from_a(PEER, TCP(sport=80, dport=33000, flags="FA"))).retval == TC_ACT_REDIRECT
    # the same ports, now opened by the pod: its Outbound rules decide
    assert run("from_container", from_a(PEER, TCP(sport=80, dport=33000, flags="S"))).retval == TC_ACT_SHOT


# --- pods on this node ---------------------------------------------------------

def test_local_switching_keeps_the_receivers_inbound_rules(maps, run, policy):
    policy(rule("deny-a", 100, source=POD_A["ip"], dports="8080"), pods=(POD_B,))
    r = run("from_container", from_a(POD_B["ip"], TCP(sport=40000, dport=8080)))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, B.ifindex, "DROP_POLICY") == 1 and metric(maps, A.ifindex, "DROP_POLICY") == 0
    assert policy.drops() == {(POD_B["ip"], "Inbound", "deny-a"): 1}
    r = run("from_container", from_a(POD_B["ip"], TCP(sport=40000, dport=80)))
    assert (r.retval, r.redirect_ifindex, r.how) == (TC_ACT_REDIRECT, B.ifindex, "peer")


def test_local_replies_pass_both_pods_rules(maps, run, policy):
    # both pods behind this test's veth (ifindex 1), so that either can send
    maps.put_endpoint(POD_B["ip"], M.Endpoint(1, B.pod_mac, B.host_mac))
    policy(rule("deny-all-in", 100, protocol="*"), pods=(POD_A, POD_B))
    from_b = Ether(src=B.pod_mac, dst=B.host_mac) / IP(src=POD_B["ip"], dst=POD_A["ip"])
    assert run("from_container", from_a(POD_B["ip"], UDP(sport=7000, dport=7001))).retval == TC_ACT_SHOT
    policy(rule("allow-a-in", 100, access="Allow", protocol="Udp", source=POD_B["ip"]),
           rule("deny-all-in", 200, protocol="*"), pods=(POD_A, POD_B))
    assert run("from_container", from_b / UDP(sport=7001, dport=7000)).retval == TC_ACT_REDIRECT   # B -> A, allowed
    assert run("from_container", from_a(POD_B["ip"], UDP(sport=7000, dport=7001))).retval == TC_ACT_REDIRECT
    assert run("from_container", from_a(POD_B["ip"], UDP(sport=7000, dport=7002))).retval == TC_ACT_SHOT


# --- the host stack (to_container) ---------------------------------------------

def test_host_deliveries_meet_inbound_rules_but_the_hosts_own_traffic_is_trusted(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"), rule("deny-all-out", 100, "Outbound", protocol="*"))
    to_pod = lambda src, l4: Ether(src=A.host_mac, dst=A.pod_mac) / IP(src=src, dst=POD_A["ip"]) / l4  # noqa: E731
    r = run("to_container", to_pod("198.51.100.7", TCP(sport=40000, dport=8080, flags="S")))
    assert r.retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_POLICY") == 1
    assert not maps.endpoint(POD_A["ip"]).flags & M.EP_HOST_FLOWS        # a denied flow is not remembered
    assert run("to_container", to_pod(PRIMARY, TCP(sport=50000, dport=8080, flags="S"))).retval == TC_ACT_OK
    r = run("from_container", from_a(PRIMARY, TCP(sport=8080, dport=50000, flags="SA")))
    assert (r.retval, r.how) == (TC_ACT_OK, "pass")                     # the probe's reply
    assert run("from_container", from_a(PRIMARY, TCP(sport=8080, dport=50001))).retval == TC_ACT_SHOT


# --- fragments -------------------------------------------------------------------

def test_later_fragments_follow_their_first_fragment(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"))
    run("from_container", from_a(PEER, UDP(sport=5000, dport=53)))
    first = from_nic(PEER, UDP(sport=53, dport=5000, len=2008) / (b"x" * 1472), id=7, flags="MF")
    later = from_nic(PEER, b"y" * 528, id=7, frag=185, proto=17)
    assert run("from_nic", first).retval == TC_ACT_REDIRECT
    assert run("from_nic", later).retval == TC_ACT_REDIRECT
    stray = from_nic(PEER, b"y" * 528, id=8, frag=185, proto=17)
    assert run("from_nic", stray).retval == TC_ACT_SHOT
    assert metric(maps, A.ifindex, "DROP_POLICY_FRAGMENT") == 1


# --- the flow table, and applying ----------------------------------------------------

def test_a_full_flow_table_drops_new_flows_counted_and_keeps_the_old(maps, run, policy):
    policy(rule("allow-all-in", 100, access="Allow", protocol="*"))
    assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_REDIRECT
    flows = M.PinnedMap(f"{maps.dir}/policy_flows", "struct vnd_flow_key", "struct vnd_policy_flow")
    try:
        filler = 0
        while True:
            key = M.HostFlow(POD_A["ip"], "10.9.0.1", filler & 0xFFFF, filler >> 16, 17).key()
            try:
                flows.put(key, {"set": 1})
            except syscall.BpfError as e:
                assert e.errno == errno.E2BIG
                break
            filler += 1
        r = run("from_nic", from_nic(PEER, UDP(sport=2, dport=2)))
        assert r.retval == TC_ACT_SHOT
        assert metric(maps, A.ifindex, "DROP_POLICY_TABLE_FULL") == 1
        assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_REDIRECT
    finally:
        flows.close()


def test_applying_again_switches_sets_whole_and_forgets_flows_the_new_rules_deny(maps, run, policy):
    policy(rule("allow-all-in", 100, access="Allow", protocol="*"))
    run("from_nic", from_nic(PEER, TCP(sport=1000, dport=80, flags="S")))
    run("from_nic", from_nic(PEER, TCP(sport=1000, dport=22, flags="S")))
    with PM.PolicyMaps(maps.dir) as pm:
        first = pm.endpoint_set(POD_A["ip"])
    report = policy(rule("deny-ssh", 100, dports="22"), rule("allow-all-in", 200, access="Allow", protocol="*"))
    assert report.flows_removed == 1 and report.sets_removed == 1
    with PM.PolicyMaps(maps.dir) as pm:
        assert pm.endpoint_set(POD_A["ip"]) not in (0, first) and pm.set_ids() == {pm.endpoint_set(POD_A["ip"])}
        assert [f.pod_port for f in pm.flows()] == [80]
    assert run("from_container", from_a(PEER, TCP(sport=80, dport=1000, flags="A"))).retval == TC_ACT_REDIRECT
    assert run("from_nic", from_nic(PEER, TCP(sport=1000, dport=22, flags="A"))).retval == TC_ACT_SHOT


def test_deleting_the_rule_set_restores_traffic_and_turns_the_switch_off(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"))
    assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_SHOT
    enforce.delete(policy.state, maps.dir, "g")
    assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_REDIRECT
    with PM.PolicyMaps(maps.dir) as pm:
        assert not pm.enabled() and not pm.set_ids() and not pm.endpoint_sets()


def test_an_endpoint_added_later_gets_its_set_before_its_first_packet(maps, run, policy):
    enforce.apply(policy.state, maps.dir, {"name": "late", "properties": {"securityRules": [
        rule("deny-all-in", 100, protocol="*")]}}, Selectors(addresses=("10.3.1.0/24",)))
    maps.delete_endpoint(POD_A["ip"])
    with PM.PolicyMaps(maps.dir) as pm:
        pm.delete_endpoint_set(POD_A["ip"])
    assert enforce.policy_for_endpoint(policy.state, maps, M.ip_of(M.ip_be32(POD_A["ip"]))) == "late"
    maps.put_endpoint(POD_A["ip"], A)
    assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_SHOT
    enforce.forget_endpoint(maps, M.ip_of(M.ip_be32(POD_A["ip"])))
    with PM.PolicyMaps(maps.dir) as pm:
        assert pm.endpoint_set(POD_A["ip"]) == 0 and not pm.drops()



def test_the_sweep_expires_idle_flows_and_those_of_pods_without_a_rule_set(maps, run, policy):
    policy(rule("allow-all-in", 100, access="Allow", protocol="*"))
    run("from_nic", from_nic(PEER, UDP(sport=1, dport=1)))
    run("from_nic", from_nic(PEER, TCP(sport=1, dport=1, flags="S")))
    run("from_container", from_a(PEER, TCP(sport=1, dport=1, flags="SA")))
    assert policy_flows.sweep_pinned(maps.dir) == policy_flows.SweepResult(0, 0, 2)
    with PM.PolicyMaps(maps.dir) as pm:
        later = snat.now_ns() + 200 * 10**9     # beyond UDP's (unanswered: 30 s), within answered TCP's 7440 s
        assert policy_flows.sweep(pm, now=later) == policy_flows.SweepResult(1, 0, 1)
        pm.delete_endpoint_set(POD_A["ip"])
        assert policy_flows.sweep(pm) == policy_flows.SweepResult(0, 1, 0)


def test_a_rule_set_the_datapath_cannot_hold_is_refused_and_nothing_changes(maps, run, policy):
    policy(rule("deny-all-in", 100, protocol="*"))
    with PM.PolicyMaps(maps.dir) as pm:
        before = (pm.endpoint_set(POD_A["ip"]), pm.set_ids())
    too_many = [rule(f"sp{i}", 100 + i, sports=str(1000 + i), dports="443") for i in range(PM.CANDIDATES + 1)]
    with pytest.raises(PolicyError, match=r"rule set 'g' refused, nothing changed: .*rules sp0, sp1"):
        policy(*too_many)
    with PM.PolicyMaps(maps.dir) as pm:
        assert (pm.endpoint_set(POD_A["ip"]), pm.set_ids()) == before
    assert run("from_nic", from_nic(PEER, UDP(sport=1, dport=1))).retval == TC_ACT_SHOT
    assert report.show(policy.state, maps.dir)["ruleSets"][0]["revision"] == 1
