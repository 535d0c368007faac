"""to_container (tc egress on a pod's host veth) remembers flows the host stack
delivers to a pod; from_container returns their replies to the host stack,
where conntrack reverses a DNAT such as a portmap hostPort."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from pkt_harness import NIC_IFINDEX, POD_A, PRIMARY, TC_ACT_OK, TC_ACT_REDIRECT, metric
from vnetdp.datapath import maps as M

A = POD_A["ep"]
CLIENT = "198.51.100.7"


def host_to_pod(src: str, l4):
    return Ether(src=A.host_mac, dst=A.pod_mac) / IP(src=src, dst=POD_A["ip"]) / l4


def pod_reply(dst: str, l4):
    return Ether(src=A.pod_mac, dst=A.host_mac) / IP(src=POD_A["ip"], dst=dst) / l4


def test_reply_of_a_flow_the_host_delivered_goes_back_to_the_host(maps, run):
    frame = host_to_pod(CLIENT, TCP(sport=40000, dport=8080, flags="S"))
    r = run("to_container", frame)
    assert r.retval == TC_ACT_OK and r.raw == bytes(frame)   # observed, not touched
    assert maps.endpoint(POD_A["ip"]).flags & M.EP_HOST_FLOWS
    reply = pod_reply(CLIENT, TCP(sport=8080, dport=40000, flags="SA"))
    r = run("from_container", reply)
    assert r.retval == TC_ACT_OK and r.how == "pass" and r.raw == bytes(reply)
    assert metric(maps, A.ifindex, "FWD_HOST_FLOW") == 1


def test_other_flows_of_that_pod_keep_the_datapath(maps, run):
    run("to_container", host_to_pod(CLIENT, TCP(sport=40000, dport=8080, flags="S")))
    for other in (TCP(sport=8080, dport=40001), UDP(sport=8080, dport=40000), TCP(sport=9090, dport=40000)):
        r = run("from_container", pod_reply(CLIENT, other))
        assert (r.retval, r.redirect_ifindex) == (TC_ACT_REDIRECT, NIC_IFINDEX)
    assert metric(maps, A.ifindex, "FWD_HOST_FLOW") == 0


def test_the_hosts_own_connections_are_not_recorded(maps, run):
    run("to_container", host_to_pod(PRIMARY, TCP(sport=40000, dport=8080, flags="S")))
    assert not maps.endpoint(POD_A["ip"]).flags & M.EP_HOST_FLOWS
