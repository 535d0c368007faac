"""Endpoint lifecycle in a lab VM: rollback, idempotent delete, CHECK-style
verification, both tc attachment mechanisms and XDP on the NIC."""
from __future__ import annotations

import ipaddress
import os

import pytest
from pyroute2 import IPRoute

from vnetdp import endpoint, links, netns
from vnetdp.datapath import attach, syscall
from vnetdp.lab import probe
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import run


@pytest.fixture
def pod_slot(lab):
    """A fresh pod namespace on VM 1 (slot 6), removed with its endpoint afterwards."""
    vm = lab.plan.vm(1)
    ns = lab.plan.pod_ns(vm, 6)
    run(["ip", "netns", "add", ns])
    address = vm.secondaries(lab.plan.pool)[5]
    yield vm, ns, address
    with netns.enter(vm.ns):
        endpoint.delete(lab.node(vm), ns, "eth0", address)
    run(["ip", "netns", "del", ns], check=False)


def host_links(vm_ns: str) -> set[str]:
    with netns.enter(vm_ns), IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_failed_add_leaves_nothing_behind(lab, pod_slot, monkeypatch):
    vm, ns, address = pod_slot
    before = host_links(vm.ns)

    def boom(*a, **kw):
        raise RuntimeError("injected failure at attach")

    monkeypatch.setattr(attach, "attach_new", boom)  # the pod veth's programs, the last step
    with netns.enter(vm.ns), pytest.raises(RuntimeError, match="injected"):
        endpoint.add(lab.node(vm), ns, netns.path_of(ns), "eth0", address)
    assert host_links(vm.ns) == before
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        assert m.endpoint(address) is None
    with netns.enter(vm.ns), IPRoute() as ipr:
        assert not [r for r in ipr.get_routes(family=2) if r.get_attr("RTA_DST") == str(address)]


def test_add_into_missing_netns_fails_cleanly(lab):
    vm = lab.plan.vm(1)
    before = host_links(vm.ns)
    with netns.enter(vm.ns), pytest.raises(netns.NetnsNotFound):
        endpoint.add(lab.node(vm), "ghost", "/run/netns/vnd-no-such-ns", "eth0",
                     ipaddress.IPv4Address("10.3.1.9"))
    assert host_links(vm.ns) == before


def test_check_detects_route_program_and_map_entry(lab, pod_slot):
    vm, ns, address = pod_slot
    node = lab.node(vm)
    with netns.enter(vm.ns):
        ep = endpoint.add(node, ns, netns.path_of(ns), "eth0", address)
        assert endpoint.check(node, ns, "eth0", netns.path_of(ns), address) == []
        with IPRoute() as ipr:
            ipr.route("del", dst=f"{address}/32", oif=ep.host_ifindex, scope=links.SCOPE_LINK)
        assert any("route" in p for p in endpoint.check(node, ns, "eth0", netns.path_of(ns), address))
        attach.detach(ep.host_ifindex, "ingress", node.bpffs.link_pin(ep.host_ifname, "ingress"))
        assert any("not attached" in p for p in endpoint.check(node, ns, "eth0", netns.path_of(ns), address))
        endpoint.add(node, ns, netns.path_of(ns), "eth0", address)  # repair by re-adding
        with node.maps() as m:
            m.delete_endpoint(address)
        assert any("endpoint entry" in p for p in endpoint.check(node, ns, "eth0", netns.path_of(ns), address))


def test_delete_twice_and_after_netns_is_gone(lab, pod_slot):
    vm, ns, address = pod_slot
    node = lab.node(vm)
    with netns.enter(vm.ns):
        ep = endpoint.add(node, ns, netns.path_of(ns), "eth0", address)
    run(["ip", "netns", "del", ns])
    with netns.enter(vm.ns):
        endpoint.delete(node, ns, "eth0", address)
        endpoint.delete(node, ns, "eth0", address)
        with node.maps() as m:
            assert m.endpoint(address) is None
            assert not [x for x in m.metrics() if x.ifindex == ep.host_ifindex]
    assert ep.host_ifname not in host_links(vm.ns)
    assert not os.path.exists(node.bpffs.link_pin(ep.host_ifname, "ingress"))


@pytest.mark.parametrize("mode", ["clsact", "tcx"])
def test_pod_attachment_by_each_mechanism_carries_traffic(lab, pod_slot, mode):
    vm, ns, address = pod_slot
    node = lab.node(vm, pod_attach_mode=mode)
    with netns.enter(vm.ns):
        ep = endpoint.add(node, ns, netns.path_of(ns), "eth0", address)
        got = attach.attached(ep.host_ifindex, "ingress", node.bpffs.link_pin(ep.host_ifname, "ingress"))
    assert got.mechanism == mode
    fd = node.programs.prog_fd("from_container")
    try:
        assert got.prog_id == syscall.prog_id(fd)
    finally:
        os.close(fd)
    before = counters(lab, vm)
    assert probe.ping(ns, str(lab.plan.vm(2).secondaries(lab.plan.pool)[0])).ok
    assert (counters(lab, vm) - before)["FWD_VNET"] >= 3
    with netns.enter(vm.ns):
        endpoint.delete(node, ns, "eth0", address)
        assert attach.attached(ep.host_ifindex, "ingress", node.bpffs.link_pin(ep.host_ifname, "ingress")) is None


def test_xdp_on_the_nic_delivers_into_pods(lab):
    """VM 2 switched to XDP on its NIC: a new pod there is reached from VM 1."""
    vm1, vm2 = lab.plan.all_vms
    ns = lab.plan.pod_ns(vm2, 7)
    address = vm2.secondaries(lab.plan.pool)[6]
    node = lab.node(vm2, nic_attach="xdp")
    run(["ip", "netns", "add", ns])
    try:
        with netns.enter(vm2.ns):
            endpoint.add(node, ns, netns.path_of(ns), "eth0", address)
            with IPRoute() as ipr:
                nic = links.get_link(ipr, "eth0")
            assert attach.attached(nic.index, "xdp", node.bpffs.link_pin("eth0", "xdp")) is not None
            # from_nic behind XDP, for what XDP passes on (frames into shaped pods)
            assert attach.attached(nic.index, "ingress", node.bpffs.link_pin("eth0", "ingress")) is not None
        before = counters(lab, vm2)
        assert probe.ping(lab.plan.pod_ns(vm1, 1), str(address)).ok
        tcp = probe.tcp_transfer(lab.plan.pod_ns(vm1, 1), ns, str(address))
        assert tcp.ok, tcp.detail
        assert (counters(lab, vm2) - before)["FWD_TO_POD"] > 100
    finally:
        with netns.enter(vm2.ns):
            endpoint.delete(node, ns, "eth0", address)
            lab.node(vm2).configure()  # back to tc for the other tests
        run(["ip", "netns", "del", ns], check=False)
