"""The virtual network's features reach pods, enforced by the fabric: security
groups on a NIC and on a subnet (stateful), l2bridge vs l2tunnel, route tables
through an appliance or to nowhere, a peered VNet without SNAT, public IPs on
secondary addresses (which vnetdp learns from the metadata document and does
not translate), the internal load balancer and its health probe."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab_pods import address_of
from vnetdp import netns, public_ips
from vnetdp.datapath import maps as M
from vnetdp.lab import cni, fabric, fabric_lb, fabric_nsg, fabric_public_ips, fabric_routes, probe
from vnetdp.lab import plan as P
from vnetdp.lab.connstorm import EchoServer, Job, source_seen, storm
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import in_ns

PORT = 8080


def deny(name: str, **props) -> dict:
    """A group of one Deny rule (TCP 8080 from anywhere to anywhere, inbound, unless ``props`` say otherwise)."""
    base = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "*", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": str(PORT)}
    return {"name": name, "properties": {"securityRules": [{"name": "deny", "properties": {**base, **props}}]}}


@pytest.fixture
def nsgs(lab) -> Iterator:
    """nsgs(doc, nics=[...], subnets=[...]): a group the fabric enforces for one test."""
    def attach(doc: dict, nics=(), subnets=()) -> str:
        fabric_nsg.apply(lab.plan, doc, list(nics), list(subnets))
        return fabric_nsg.counter_name(doc["name"], "deny")

    yield attach
    for a in fabric_nsg.attached(lab.plan):
        fabric_nsg.delete(lab.plan, a.group.name)


def pod(lab, vm: int, j: int) -> tuple[str, str]:
    v = lab.plan.vm(vm)
    return lab.plan.pod_ns(v, j), str(lab.pod_address(v, j))


def dropped(lab, counter: str) -> int:
    return fabric.counters(lab.plan).get(counter, 0)


def test_a_nic_nsg_denies_tcp_8080_to_one_pod_from_the_peer_and_ping_still_works(lab, nsgs):
    ns, addr = pod(lab, 2, 1)
    counter = nsgs(deny("nic-8080", destinationAddressPrefix=addr), nics=["vm2"])
    assert probe.tcp_connect(lab.plan.peer, ns, addr, PORT) is None
    assert dropped(lab, counter) >= 1
    assert probe.ping(lab.plan.peer, addr).ok
    assert probe.tcp_connect(lab.plan.peer, ns, addr, PORT + 1) == str(P.PEER_IP)   # another port passes
    other_ns, other = pod(lab, 1, 1)
    assert probe.tcp_connect(lab.plan.peer, other_ns, other, PORT) == str(P.PEER_IP)  # another NIC's pod


def test_a_subnet_nsg_applies_to_every_nic_in_the_subnet(lab, nsgs):
    counter = nsgs(deny("subnet-peer", sourceAddressPrefix=str(P.PEER_IP), protocol="*", destinationPortRange="*"),
                   subnets=["default"])
    for vm in (1, 2):
        ns, addr = pod(lab, vm, 1)
        assert not probe.ping(lab.plan.peer, addr, count=1).ok
    assert dropped(lab, counter) >= 2
    a_ns, _ = pod(lab, 1, 1)
    b_ns, b = pod(lab, 2, 1)
    assert probe.tcp_connect(a_ns, b_ns, b, PORT) is not None   # pods of the subnet among themselves


def test_nsgs_are_stateful_replies_of_allowed_flows_pass(lab, nsgs):
    ns, addr = pod(lab, 2, 1)
    nsgs(deny("no-peer-in", sourceAddressPrefix=str(P.PEER_IP), protocol="*", destinationPortRange="*"),
         nics=["vm2"])
    assert probe.tcp_connect(lab.plan.peer, ns, addr, PORT) is None
    assert probe.tcp_connect(ns, lab.plan.peer, str(P.PEER_IP), PORT) == addr   # its replies come in
    assert probe.ping(ns, str(P.PEER_IP)).ok


def test_l2bridge_switches_locally_past_the_fabric_rules_l2tunnel_applies_them(lab, nsgs, node_set):
    """The same same-VM pod-to-pod flow, blocked by a fabric NSG only with localSwitching: false."""
    vm1 = lab.plan.vm(1)
    (src_ns, src), (dst_ns, dst) = pod(lab, 1, 1), pod(lab, 1, 2)
    counter = nsgs(deny("same-vm", sourceAddressPrefix=src, destinationAddressPrefix=dst), nics=["vm1"])
    before, fab_before = counters(lab, vm1), dropped(lab, counter)
    assert probe.tcp_connect(src_ns, dst_ns, dst, PORT) == src                  # l2bridge
    assert (counters(lab, vm1) - before)["FWD_LOCAL"] >= 3
    assert dropped(lab, counter) == fab_before
    node_set(vm1, localSwitching=False)                                       # l2tunnel
    before = counters(lab, vm1)
    assert probe.tcp_connect(src_ns, dst_ns, dst, PORT) is None
    assert dropped(lab, counter) > fab_before
    moved = counters(lab, vm1) - before
    assert moved["FWD_VNET"] >= 1 and moved["FWD_LOCAL"] == 0
    assert probe.ping(src_ns, dst).ok                                          # the rule is TCP 8080 only


def test_the_peered_vnet_reaches_pods_and_pods_reach_it_without_snat(lab):
    ns, addr = pod(lab, 2, 1)
    peered_ns, peered = lab.plan.host_ns(P.PEERED_VM), str(P.PEERED_VM.ip)
    vm2 = lab.plan.vm(2)
    assert probe.tcp_connect(peered_ns, ns, addr, PORT) == peered
    before = counters(lab, vm2)
    assert probe.tcp_connect(ns, peered_ns, peered, PORT) == addr               # the pod's own address
    moved = counters(lab, vm2) - before
    assert moved["FWD_VNET"] >= 2 and moved["FWD_SNAT"] == 0


@pytest.fixture
def routes(lab) -> Iterator:
    def apply(*routes: dict) -> None:
        fabric_routes.apply(lab.plan, {"name": "rt", "properties": {"routes": list(routes)}}, [P.VNET_SUBNET])

    yield apply
    fabric_routes.clear(lab.plan, [P.VNET_SUBNET])


def test_a_route_table_sends_a_prefix_through_the_appliance(lab, routes):
    ns, addr = pod(lab, 1, 1)
    peered_ns, peered = lab.plan.host_ns(P.PEERED_VM), str(P.PEERED_VM.ip)
    before = fabric_routes.appliance_forwarded(lab.plan)
    assert probe.ping(ns, peered).ok
    assert fabric_routes.appliance_forwarded(lab.plan) == before                # no route: straight
    routes({"name": "hub", "properties": {"addressPrefix": str(P.PEERED_VNET), "nextHopType": "VirtualAppliance",
                                          "nextHopIpAddress": str(P.APPLIANCE.ip)}})
    assert probe.ping(ns, peered).ok
    assert probe.tcp_connect(ns, peered_ns, peered, PORT) == addr
    assert fabric_routes.appliance_forwarded(lab.plan) >= before + 3 + 2


def test_a_route_to_none_drops_the_prefix(lab, routes):
    ns, _ = pod(lab, 1, 1)
    peered = str(P.PEERED_VM.ip)
    routes({"name": "sink", "properties": {"addressPrefix": f"{peered}/32", "nextHopType": "None"}})
    assert not probe.ping(ns, peered, count=1).ok
    fabric_routes.clear(lab.plan, [P.VNET_SUBNET])
    assert probe.ping(ns, peered, count=1).ok


def lab_cli(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnetdp.lab.cli", *args, "--id", lab.plan.lab_id],
                          capture_output=True, text=True, timeout=60)


def test_the_lab_command_applies_shows_and_deletes_a_group_and_refuses_a_bad_file(lab, nsgs, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(deny("from-file")))
    bad.write_text(json.dumps(deny("bad-file", destinationPortRange="80-70")))
    applied = lab_cli(lab, "nsg", "apply", str(good), "--nic", "vm2")
    assert applied.returncode == 0, applied.stderr
    assert "from-file" in lab_cli(lab, "nsg", "show").stdout
    refused = lab_cli(lab, "nsg", "apply", str(bad), "--nic", "vm1")
    assert refused.returncode == 1
    assert "rule 'deny' destinationPortRange" in refused.stderr
    assert [a.group.name for a in fabric_nsg.attached(lab.plan)] == ["from-file"]
    assert lab_cli(lab, "nsg", "delete", "from-file").returncode == 0
    assert fabric_nsg.attached(lab.plan) == []


# --- public IPs on secondary addresses ------------------------------------------------------

REFERENCE_PLUGINS = "/usr/lib/cni"   # host-local: a pod given the one address a test names
INET = str(P.INET_IP)
ECHO_PORT = 7100


@pytest.fixture
def public_ip(lab) -> Iterator:
    """public_ip(address) -> its public IP, given by the fabric for one test."""
    given: list[ipaddress.IPv4Address] = []

    def assign(address: str) -> str:
        given.append(ipaddress.IPv4Address(address))
        return str(fabric_public_ips.assign(lab.plan, given[-1]))

    yield assign
    for address in set(given) & set(fabric_public_ips.assigned(lab.plan)):
        fabric_public_ips.unassign(lab.plan, address)


def endpoint_flags(lab, vm, address: str) -> int:
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        return m.endpoint(address).flags


def free_secondary(lab, vm) -> str:
    """A secondary address of ``vm`` that no endpoint holds, from the top of its pool."""
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        held = set(m.endpoints())
    return str(next(a for a in reversed(vm.secondaries(lab.plan.pool)) if a not in held))


def inet_sees(lab, ns: str) -> str:
    """The source the internet host sees of a connection from ``ns``."""
    return asyncio.run(source_seen(lab.plan.inet, (INET, ECHO_PORT), ns, (INET, ECHO_PORT)))


def test_a_pods_public_ip_reaches_it_from_the_internet_and_is_its_source_there(lab, pods, public_ip, tmp_path):
    """A public IP given to an address before a pod gets it: ADD flags the
    endpoint from the metadata document; the internet host connects to the
    public IP and reaches the pod, the pod's own connections arrive from its
    public IP, untranslated by vnetdp (no SNAT counter moves), while another
    pod on the same VM still arrives from the VM's primary."""
    vm2 = pods.vm
    address = free_secondary(lab, vm2)
    public = public_ip(address)
    time.sleep(public_ips.FRESH_S)   # ADDs read the document as it was at most this long before
    conf = cni.network_config(version="1.0.0",  # Debian's reference plugins stop at 1.0.0
                              ipam={"type": "host-local", "dataDir": str(tmp_path),
                                    "ranges": [[{"subnet": str(P.VNET), "rangeStart": address, "rangeEnd": address}]]})
    ns, added = pods.add(conf, extra_path=(REFERENCE_PLUGINS,))
    assert address_of(added) == address
    try:
        assert endpoint_flags(lab, vm2, address) & M.EP_PUBLIC_IP
        before, fab_before = counters(lab, vm2), fabric.counters(lab.plan)
        inbound = asyncio.run(source_seen(ns, (address, ECHO_PORT), lab.plan.inet, (public, ECHO_PORT)))
        outbound = inet_sees(lab, ns)
        assert (inbound, outbound) == (INET, public)
        moved = counters(lab, vm2) - before
        assert moved["FWD_PUBLIC_IP"] >= 4 and moved["FWD_TO_POD"] >= 4
        assert moved["FWD_SNAT"] == moved["FWD_SNAT_REPLY"] == 0
        assert fabric.counters(lab.plan)["inet_not_primary"] == fab_before["inet_not_primary"]
        other_ns, _ = pod(lab, 2, 1)
        assert inet_sees(lab, other_ns) == str(vm2.primary)
        assert (counters(lab, vm2) - before)["FWD_SNAT"] >= 2
    finally:
        assert pods.call("DEL", ns, conf, extra_path=(REFERENCE_PLUGINS,)).ok


def vnetdp(lab, vm, *args: str) -> subprocess.CompletedProcess:
    """`vnetdp ARGS` inside VM ``vm``'s namespace, as on a node."""
    node = ["--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)]
    return in_ns(vm.ns, [sys.executable, "-m", "vnetdp.cli", *args, *node], check=False, timeout=120)


def fixed_flag(lab, vm, address: str) -> str | None:
    """``vnetdp reconcile --fix``: what became of ``address``'s public-IP flag difference."""
    report = json.loads(vnetdp(lab, vm, "reconcile", "--fix", "--json").stdout)
    return next((d["status"] for d in report["differences"]
                 if (d["kind"], d["subject"]) == ("public-ip-flag", address)), None)


def test_a_public_ip_given_or_taken_while_the_pod_runs_is_learnt_by_reconcile(lab, pods, public_ip):
    vm2 = pods.vm
    ns, added = pods.add()
    address = address_of(added)
    public = public_ip(address)
    assert lab_cli(lab, "public-ip", "show").stdout.splitlines() == [f"{public} <-> {address}"]
    assert not endpoint_flags(lab, vm2, address) & M.EP_PUBLIC_IP        # its ADD saw none
    found = vnetdp(lab, vm2, "reconcile")
    assert found.returncode == 1 and "public-ip-flag" in found.stdout, found.stdout
    assert fixed_flag(lab, vm2, address) == "fixed"
    assert endpoint_flags(lab, vm2, address) & M.EP_PUBLIC_IP
    assert inet_sees(lab, ns) == public

    fabric_public_ips.unassign(lab.plan, ipaddress.IPv4Address(address))
    assert fixed_flag(lab, vm2, address) == "fixed"
    assert not endpoint_flags(lab, vm2, address) & M.EP_PUBLIC_IP
    assert inet_sees(lab, ns) == str(vm2.primary)


# --- the internal load balancer -------------------------------------------------------------

FRONTEND = (str(P.LB_FRONTEND), 80)
BACKEND_PORT = 8080


def balancer(*backends: str) -> dict:
    """Load balancer "ilb": TCP 80 on the frontend to ``backends`` port 8080, probed there every second."""
    return fabric_lb.document("ilb", list(backends), FRONTEND[1], BACKEND_PORT)


@pytest.fixture
def ilb(lab) -> Iterator:
    """ilb(doc): the lab's load balancer for one test, deleted afterwards."""
    yield lambda doc: fabric_lb.apply(lab.plan, doc)
    fabric_lb.delete(lab.plan)


def out_within(lab, backend: str, seconds: float) -> float | None:
    """Seconds until the probe has taken ``backend`` out, None if not within ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not fabric_lb.health(lab.plan).get((ipaddress.IPv4Address(backend), BACKEND_PORT), True):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_the_load_balancer_spreads_connections_over_pods_on_two_vms_and_drops_a_dead_one(lab, ilb):
    """100 connections from the peer VM to the frontend reach two pods on two
    VMs about evenly, each seeing the client's own address (no SNAT: the
    replies go back through the fabric); a backend whose server stops is out
    within seconds and the next connections all reach the other."""
    (a_ns, a), (b_ns, b) = pod(lab, 1, 1), pod(lab, 2, 1)
    servers = {a: EchoServer(a_ns, a, BACKEND_PORT), b: EchoServer(b_ns, b, BACKEND_PORT)}
    jobs = [Job(lab.plan.peer, 0, f"c{i}") for i in range(100)]

    def clients() -> dict[str, int]:
        """Connections each backend had from the peer VM (not the probe's)."""
        return {ip: sum(1 for s in server.sessions if s.peer[0] == str(P.PEER_IP)) for ip, server in servers.items()}

    async def main():
        running = {ip: await s.start() for ip, s in servers.items()}
        ilb(balancer(a, b))   # the backends listen before the first probe
        spread = await storm(jobs, FRONTEND, concurrency=10)
        await asyncio.sleep(0.2)   # the servers see the last closes
        split = clients()
        running[b].close()
        await running[b].wait_closed()
        taken_out = await asyncio.get_running_loop().run_in_executor(None, out_within, lab, b, 5.0)
        after = await storm(jobs[:20], FRONTEND, concurrency=5)
        await asyncio.sleep(0.2)
        running[a].close()
        return spread, split, taken_out, after

    spread, split, taken_out, after = asyncio.run(main())
    out = f"after {taken_out:.2f} s" if taken_out is not None else "not within 5 s"
    print(f"\nload balancer: 100 connections at {spread.rate:.0f}/s (10 at a time), split {split[a]}/{split[b]}; "
          f"a stopped backend out {out}")
    assert spread.failures == [] and {host for host, _ in spread.results} == {str(P.PEER_IP)}
    assert split[a] + split[b] == 100 and min(split.values()) >= 40, split
    assert taken_out is not None and taken_out < 3
    assert after.failures == [] and clients() == {a: split[a] + 20, b: split[b]}


def test_the_lab_command_applies_shows_and_deletes_the_load_balancer(lab, tmp_path):
    good, bad = tmp_path / "ilb.json", tmp_path / "bad.json"
    (_, a), (_, b) = pod(lab, 1, 1), pod(lab, 2, 1)
    good.write_text(json.dumps(balancer(a, b)))
    doc = balancer(a)
    doc["properties"]["loadBalancingRules"][0]["properties"]["backendAddressPool"] = {"id": "none"}
    bad.write_text(json.dumps(doc))
    try:
        applied = lab_cli(lab, "lb", "apply", str(good))
        assert applied.returncode == 0, applied.stderr
        shown = lab_cli(lab, "lb", "show").stdout
        assert "tcp: tcp 10.3.0.200:80 -> backends :8080" in shown and a in shown and b in shown
        refused = lab_cli(lab, "lb", "apply", str(bad))
        assert refused.returncode == 1 and "rule 'tcp' backendAddressPool" in refused.stderr
        assert fabric_lb.applied(lab.plan).rules[0].backends == (ipaddress.IPv4Address(a), ipaddress.IPv4Address(b))
        assert lab_cli(lab, "lb", "delete", "ilb").returncode == 0
        assert fabric_lb.applied(lab.plan) is None and lab_cli(lab, "lb", "show").stdout == "no load balancer\n"
    finally:
        fabric_lb.delete(lab.plan)
