"""SNAT end to end: pods on both VMs reach the lab's internet host through the
BPF translation, the internet sees only the VMs' primary IPs, the VMs' own
connections are left alone, and the sweep expires what is done."""
from __future__ import annotations

import asyncio
import json
import socket
import time

from vnetdp import cli, netns
from vnetdp.datapath import snat
from vnetdp.lab import fabric, probe
from vnetdp.lab.connstorm import EchoServer, Job, StormResult, exchange, ns_socket, open_from, storm
from vnetdp.lab import plan as P
from vnetdp.lab.observe import counters

INET = str(P.INET_IP)
ECHO_PORT, UDP_PORT = 7000, 7001
DEST = (INET, ECHO_PORT)
SNAT_PORTS = range(61000, 65536)
CONNECTIONS = 5000


def snat_drops(lab) -> int:
    return sum(n for vm in lab.plan.all_vms for r, n in counters(lab, vm).items()
               if r.startswith("DROP_SNAT"))


def test_ping_tcp_and_udp_reach_the_internet_from_primary_ips_only(lab):
    vm2 = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm2, 1)
    before_fabric, before = fabric.counters(lab.plan), counters(lab, vm2)
    assert probe.ping(pod, INET).ok
    server, client = ns_socket(lab.plan.inet, socket.SOCK_DGRAM), ns_socket(pod, socket.SOCK_DGRAM)
    with server, client:
        server.bind((INET, UDP_PORT))
        server.settimeout(3)
        client.settimeout(3)
        client.bind(("0.0.0.0", 40123))
        client.sendto(b"request", (INET, UDP_PORT))
        data, (src, sport) = server.recvfrom(100)
        server.sendto(b"response", (src, sport))
        assert client.recvfrom(100) == (b"response", (INET, UDP_PORT))
    assert (data, src) == (b"request", str(vm2.primary)) and sport in SNAT_PORTS
    moved = counters(lab, vm2) - before
    assert moved["FWD_SNAT"] >= 4 and moved["FWD_SNAT_REPLY"] >= 4
    after = fabric.counters(lab.plan)
    assert after["inet_not_primary"] == before_fabric["inet_not_primary"]
    assert after[fabric.INET_FROM_PRIMARY] >= before_fabric[fabric.INET_FROM_PRIMARY] + 4


def test_5000_connections_from_pods_on_both_vms_with_colliding_source_ports(lab):
    """vm1's two pods use the same source ports toward the same destination at
    the same time; a VM's own connection keeps working throughout."""
    vm1, vm2 = lab.plan.all_vms
    pod1, pod2, pod3 = lab.plan.pod_ns(vm1, 1), lab.plan.pod_ns(vm1, 2), lab.plan.pod_ns(vm2, 1)
    drops_before = snat_drops(lab)
    fabric_before = fabric.counters(lab.plan)["inet_not_primary"]
    jobs = [Job(ns, 20000 + i if ns != pod3 else 0, f"{ns}/{i}/{k}")
            for i in range(CONNECTIONS // 4) for k, ns in enumerate((pod1, pod2, pod3, pod3))]

    echo = EchoServer(lab.plan.inet, INET, ECHO_PORT)

    async def main() -> tuple[StormResult, list[str]]:
        server = await echo.start()
        host_reader, host_writer = await open_from(vm1.ns, DEST)
        host_seen: list[tuple[str, int]] = []
        done = asyncio.Event()

        async def host_keepalive() -> None:
            while not done.is_set():
                host_seen.append(await exchange(host_reader, host_writer, "host"))
                await asyncio.sleep(0.02)

        keepalive = asyncio.create_task(host_keepalive())
        result = await storm(jobs, DEST)
        done.set()
        await keepalive
        host_writer.close()
        server.close()
        return result, host_seen

    result, host_seen = asyncio.run(main())
    assert not result.failures, f"{len(result.failures)} of {len(jobs)} failed: {result.failures[:3]}"
    assert {host for host, _ in result.results} == {str(vm1.primary), str(vm2.primary)}
    assert all(port in SNAT_PORTS for _, port in result.results)
    # A translated source is used again only after its previous connection closed
    # (closed flows' ports are taken over, as conntrack reuses TIME_WAIT tuples).
    by_source: dict = {}
    for session in sorted(echo.sessions, key=lambda x: x.opened):
        previous = by_source.get(session.peer)
        assert previous is None or previous.closed <= session.opened, (previous, session)
        by_source[session.peer] = session
    assert len(host_seen) > 10 and {h for h, _ in host_seen} == {str(vm1.primary)}
    assert all(port not in SNAT_PORTS for _, port in host_seen)  # the VM's own, untranslated
    assert snat_drops(lab) == drops_before
    assert fabric.counters(lab.plan)["inet_not_primary"] == fabric_before
    print(f"{len(jobs)} connections in {result.seconds:.1f} s")


def test_expiry_removes_closed_and_idle_flows_and_keeps_open_ones(lab, capsys):
    vm1 = lab.plan.vm(1)
    pod = lab.plan.pod_ns(vm1, 1)

    async def flows_of_three_kinds() -> asyncio.StreamWriter:
        server = await EchoServer(lab.plan.inet, INET, ECHO_PORT).start()
        reader, writer = await open_from(pod, DEST, 30001)
        await exchange(reader, writer, "closed")
        writer.close()
        reader, writer = await open_from(pod, DEST, 30002)
        await exchange(reader, writer, "open")
        server.close()
        return writer

    with ns_socket(pod, socket.SOCK_DGRAM) as udp:
        udp.bind(("0.0.0.0", 30003))
        udp.sendto(b"x", (INET, UDP_PORT))
        loop = asyncio.new_event_loop()
        try:
            open_writer = loop.run_until_complete(flows_of_three_kinds())
            time.sleep(1.2)
            with lab.node(vm1).maps() as m:
                def pod_ports() -> set[int]:
                    return {f.pod[1] for f in snat.flows(m) if str(f.pod[0]) == "10.3.1.1"}
                assert {30001, 30002, 30003} <= pod_ports()
                short = snat.Timeouts(tcp=3600, tcp_closing=1, udp=1)
                result = snat.sweep(m, short)
                assert result.expired >= 2
                assert 30002 in pod_ports() and not {30001, 30003} & pod_ports()
            cli.main(["snat", "list", "--bpffs-dir", lab.node_bpffs_dir(vm1), "--json"])
            listed = json.loads(capsys.readouterr().out)
            assert {"proto": "tcp", "pod": "10.3.1.1:30002", "closing": False, "orphan": False}.items() \
                <= next(f for f in listed if f["pod"] == "10.3.1.1:30002").items()
            open_writer.close()
            loop.run_until_complete(asyncio.sleep(0.1))  # the server sees the close
        finally:
            loop.close()


def one_udp_flow(lab, vm, port: int) -> snat.Flow:
    """The translated flow of one datagram from pod 1 of ``vm``, from ``port``
    to the internet host."""
    with ns_socket(lab.plan.pod_ns(vm, 1), socket.SOCK_DGRAM) as udp:
        udp.bind(("0.0.0.0", port))
        udp.sendto(b"x", (INET, UDP_PORT))
    with lab.node(vm).maps() as m:
        [flow] = [f for f in snat.flows(m) if f.pod[1] == port]
    return flow


def test_orphan_direction_is_removed_by_the_sweep(lab):
    vm1 = lab.plan.vm(1)
    flow = one_udp_flow(lab, vm1, 30004)
    with lab.node(vm1).maps() as m:
        m.delete_snat(flow.out)  # as if one direction had been lost
        time.sleep(0.2)
        assert snat.sweep(m, snat.Timeouts(orphan=0.1)).orphans == 1
        assert not [e for e in m.snat_entries() if e.direction == 1 and e.port == 30004]


def test_the_agent_sweeps_while_no_call_arrives(lab):
    """The agent's loop used to wait for a worker's exit before each sweep, so
    a node without CNI calls never expired a flow: its pods' quotas and the
    table filled until new flows were dropped. An orphan (5 s of grace) must
    go by the agent's own sweep (every 2 s in the lab) with no call made."""
    vm1 = lab.plan.vm(1)
    flow = one_udp_flow(lab, vm1, 30005)
    with lab.node(vm1).maps() as m:
        m.delete_snat(flow.inbound)
        assert probe.wait_until(lambda: not [f for f in snat.flows(m) if f.pod[1] == 30005],
                                snat.Timeouts().orphan + 5)


def test_snat_disabled_leaves_pod_traffic_untranslated_and_the_fabric_drops_it(lab):
    vm2 = lab.plan.vm(2)
    before = fabric.counters(lab.plan)["inet_not_primary"]
    with netns.enter(vm2.ns):
        lab.node(vm2, enable_snat=False).configure()
    try:
        assert not probe.ping(lab.plan.pod_ns(vm2, 1), INET, count=1).ok
        assert fabric.counters(lab.plan)["inet_not_primary"] > before
    finally:
        with netns.enter(vm2.ns):
            lab.node(vm2).configure()
    assert probe.ping(lab.plan.pod_ns(vm2, 1), INET, count=1).ok
