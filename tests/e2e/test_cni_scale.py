"""Concurrency and crashes on a node with a 250-address pool (SPEC §3): 250
ADDs at once, 250 DELs at once, and plugin processes killed with SIGKILL in
the middle of ADD, after which ADD, DEL or GC bring the node back to a
consistent state with no address lost or given twice."""
from __future__ import annotations

import ipaddress
import os
import random
import secrets
import signal
import subprocess
import time

import pytest
from pyroute2 import IPRoute

from vnetdp import naming, netns
from vnetdp.network.records import PodRecords
from vnetdp.ipam.store import Store
from vnetdp.lab import cni, probe
from vnetdp.lab import plan as P
from vnetdp.lab.shell import ip_batch
from vnetdp.lab.topology import Lab

POOL = 250


@pytest.fixture(scope="module")
def lab():
    lab = Lab(P.Plan(secrets.token_hex(2), vms=1, pool=POOL))
    lab.up()
    try:
        with open(os.path.join(lab.plan.dir, "net.json"), "w") as f:
            cni.json.dump(cni.network_config(), f)
        yield lab
    finally:
        lab.down()


def start(lab: Lab, command: str, ns: str, agent: bool = True) -> subprocess.Popen:
    """A plugin process for ``ns`` (the lab's network config on stdin), not waited for."""
    vm = lab.plan.vm(1)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": ns, "CNI_NETNS": netns.path_of(ns),
           "CNI_IFNAME": "eth0", "CNI_PATH": lab.cni_bin_dir(vm), **({} if agent else {"VNETDP_NO_AGENT": "1"})}
    with open(os.path.join(lab.plan.dir, "net.json"), "rb") as conf, netns.enter(vm.ns):
        return subprocess.Popen([os.path.join(lab.cni_bin_dir(vm), "vnetdp")], stdin=conf,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def node_state(lab: Lab) -> dict:
    """Everything that says which pod has which address on the node."""
    vm = lab.plan.vm(1)
    with Store(lab.plan.state_dir(vm)).transaction() as state:
        allocations = {(a.container_id, a.ifname): a.address for a in state.allocations}
    records = {r.container_id: r.address for r in PodRecords(lab.plan.state_dir(vm)).all()}
    node = lab.node(vm)
    with netns.enter(vm.ns), IPRoute() as ipr, node.maps() as m:
        veths = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()
                 if link.get_attr("IFLA_IFNAME").startswith("vnd")}
        entries = {str(ip): ep.ifindex for ip, ep in m.endpoints().items()}
    pins = [p for p in os.listdir(node.bpffs.links_dir) if not p.endswith("-eth0")]
    return {"allocations": allocations, "records": records, "veths": veths, "entries": entries, "pins": pins}


def assert_consistent(lab: Lab) -> dict:
    """Every plumbed pod has exactly one record and one allocation, no address twice."""
    s = node_state(lab)
    addresses = list(s["allocations"].values())
    assert len(addresses) == len(set(addresses)), "an address is allocated twice"
    assert {cid: addr for (cid, _), addr in s["allocations"].items()} == s["records"]
    assert set(s["entries"]) <= set(addresses)
    assert set(s["entries"].values()) == set(s["veths"].values())
    assert set(s["veths"]) == {naming.host_ifname(cid, "eth0") for cid in s["records"]}
    return s


def test_250_adds_at_once_get_250_distinct_reachable_addresses_and_250_dels_empty_the_node(lab):
    vm = lab.plan.vm(1)
    names = [lab.plan.pod_ns(vm, j) for j in range(1, POOL + 1)]
    ip_batch(None, [f"netns add {ns}" for ns in names])
    begin = time.monotonic()
    procs = [start(lab, "ADD", ns) for ns in names]
    outputs = [(p.communicate(timeout=300), p.returncode) for p in procs]
    add_wall = time.monotonic() - begin
    failed = [(ns, out) for ns, (out, rc) in zip(names, outputs) if rc != 0]
    assert not failed, failed[:3]
    addresses = [str(ipaddress.IPv4Interface(cni.json.loads(out)["ips"][0]["address"]).ip)
                 for (out, _), _ in outputs]
    assert len(set(addresses)) == POOL
    assert set(addresses) == {str(a) for a in vm.secondaries(POOL)}
    assert probe.icmp_sweep(lab.plan.peer, addresses) == set(addresses)
    assert len(assert_consistent(lab)["veths"]) == POOL

    begin = time.monotonic()
    procs = [start(lab, "DEL", ns) for ns in names]
    assert all(p.communicate(timeout=300) and p.returncode == 0 for p in procs)
    del_wall = time.monotonic() - begin
    s = assert_consistent(lab)
    assert s == {"allocations": {}, "records": {}, "veths": {}, "entries": {}, "pins": []}
    ip_batch(None, [f"netns del {ns}" for ns in names])
    print(f"{POOL} parallel ADDs: {add_wall:.1f} s, {POOL} parallel DELs: {del_wall:.1f} s")


def test_sigkill_during_add_then_add_del_or_gc_restores_consistency(lab):
    """In-process calls (no agent), so the kill really interrupts the work."""
    vm = lab.plan.vm(1)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    live: list[str] = []
    trials = 24
    for trial in range(trials):
        ns = lab.plan.pod_ns(vm, 1000 + trial)
        ip_batch(None, [f"netns add {ns}"])
        proc = start(lab, "ADD", ns, agent=False)
        time.sleep(rng.uniform(0.0, 0.45))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        action = ("ADD", "DEL", "GC")[trial % 3]
        if action == "GC":
            valid = [{"containerID": c, "ifname": "eth0"} for c in live]
            call = lab.cni(vm, "GC", cni.network_config(**{"cni.dev/valid-attachments": valid}))
        else:
            call = lab.cni(vm, action, container_id=ns, pod_netns=netns.path_of(ns))
        assert call.ok, (seed, trial, action, call.output, call.stderr[-500:])
        if action == "ADD":
            live.append(ns)
            assert lab.cni(vm, "CHECK", container_id=ns, pod_netns=netns.path_of(ns)).ok, (seed, trial)
        s = assert_consistent(lab)
        assert sorted(c for c, _ in s["allocations"]) == sorted(live), (seed, trial, action)
    assert probe.icmp_sweep(lab.plan.peer, list(assert_consistent(lab)["records"].values())) \
        == set(node_state(lab)["records"].values())
    gc = lab.cni(vm, "GC", cni.network_config(**{"cni.dev/valid-attachments": []}))
    assert gc.ok
    assert node_state(lab) == {"allocations": {}, "records": {}, "veths": {}, "entries": {}, "pins": []}
