"""Every matrix path carries ping and TCP through the BPF datapath, and the
fabric enforces what a cloud fabric enforces."""
from __future__ import annotations

import os
import socket

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from vnetdp import netns
from vnetdp.datapath import syscall
from vnetdp.lab import fabric, probe
from vnetdp.lab import plan as P
from vnetdp.lab.demo import matrix_paths
from vnetdp.lab.observe import bridges, counters

EXPECTED = {  # path -> reason that must move on the source VM
    "pod-pod same VM": "FWD_LOCAL",
    "pod-pod across VMs": "FWD_VNET",
    "pod-peer VM": "FWD_VNET",
    "host-pod": "FWD_HOST",
    "pod-internet": "FWD_SNAT",
    "pod-peered VNet": "FWD_VNET",   # the peered space is in vnetCidrs: not translated
}


@pytest.mark.parametrize("name", EXPECTED)
def test_path_carries_ping_and_tcp_through_bpf(lab, name):
    path = next(p for p in matrix_paths(lab) if p.name == name)
    before = counters(lab, path.vm)
    assert probe.ping(path.src_ns, path.dst).ok
    tcp = probe.tcp_transfer(path.src_ns, path.dst_ns, path.dst, seconds=1)
    assert tcp.ok, tcp.detail
    moved = counters(lab, path.vm) - before
    assert moved[EXPECTED[name]] > 100  # the TCP transfer went through the program
    assert not [r for r in moved if r.startswith("DROP_") and r != "DROP_UNSUPPORTED_L3"]


def test_traffic_from_fabric_enters_pods_through_bpf(lab):
    vm2 = lab.plan.vm(2)
    before = counters(lab, vm2)
    path = next(p for p in matrix_paths(lab) if p.name == "pod-pod across VMs")
    assert probe.ping(path.src_ns, path.dst).ok
    assert (counters(lab, vm2) - before)["FWD_TO_POD"] >= 3


def test_no_linux_bridge_anywhere(lab):
    assert bridges(lab) == []


def _inject(ns: str, frame) -> None:
    """Put a raw frame on eth0 of ``ns``, bypassing every program."""
    with netns.enter(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind(("eth0", 0))
            s.send(bytes(frame))
        finally:
            s.close()


@pytest.mark.parametrize("src_mac,src_ip,counter", [
    ("02:00:00:00:00:99", "10.3.1.1", "vm1_bad_mac"),   # a pod's MAC, as the pod sent it
    ("00:0d:3a:00:00:01", "10.3.7.7", "vm1_bad_ip"),    # right MAC, foreign address
])
def test_fabric_drops_frames_a_real_fabric_would_drop(lab, src_mac, src_ip, counter):
    """Frames as a pod emits them without vnetdp's rewriting never reach the VNet."""
    vm1 = lab.plan.vm(1)
    frame = Ether(src=src_mac, dst=P.GATEWAY_MAC) / IP(src=src_ip, dst=str(P.PEER_IP)) / ICMP()
    before = fabric.counters(lab.plan)[counter]
    _inject(vm1.ns, frame)
    assert fabric.counters(lab.plan)[counter] == before + 1


def test_fabric_forwards_a_well_formed_frame(lab):
    """The control for the test above: the NIC's MAC and a NIC address pass."""
    vm1 = lab.plan.vm(1)
    frame = Ether(src=vm1.mac, dst=P.GATEWAY_MAC) / IP(src=str(vm1.primary), dst=str(P.PEER_IP)) / ICMP()
    before = fabric.drops(lab.plan)
    _inject(vm1.ns, frame)
    assert fabric.drops(lab.plan) == before


def test_two_vms_never_share_maps(lab):
    vm1, vm2 = lab.plan.all_vms
    seen = {}
    for vm in (vm1, vm2):
        with netns.enter(vm.ns), lab.node(vm).maps() as m:
            fd = syscall.obj_get(f"{m.dir}/endpoints")
            try:
                seen[vm.name] = ({str(ip) for ip in m.endpoints()}, syscall.obj_info(fd, syscall.MapInfo()).id)
            finally:
                os.close(fd)
    assert {"10.3.1.1", "10.3.1.2"} <= seen["vm1"][0] and "10.3.2.1" not in seen["vm1"][0]
    assert "10.3.2.1" in seen["vm2"][0] and not seen["vm2"][0] & {"10.3.1.1", "10.3.1.2"}
    assert seen["vm1"][1] != seen["vm2"][1]


def test_reuse_of_pinned_programs_does_not_compile(lab):
    vm1 = lab.plan.vm(1)
    with netns.enter(vm1.ns):
        state = lab.node(vm1).configure()
    assert not state.load.compiled
