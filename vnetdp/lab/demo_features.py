"""The demo's rows for the cloud's features that take more than a path
(``vnetdp-lab demo``): a pod's public IP, in from the internet host and out
with its own source, and the internal load balancer spreading connections
over pods on two VMs."""
from __future__ import annotations

import asyncio

from vnetdp import netns
from vnetdp.lab import fabric_lb, fabric_public_ips, probe
from vnetdp.lab import plan as P
from vnetdp.lab.connstorm import EchoServer, Job, source_seen, storm
from vnetdp.lab.demo import matrix_line, measure
from vnetdp.lab.topology import Lab
from vnetdp.ops import reconcile

ECHO_PORT = 7100
CONNECTIONS = 100


def _learn(lab: Lab, vm: P.Vm) -> None:
    """vnetdp on ``vm`` brings its pods in line with the metadata document,
    as an operator's ``vnetdp reconcile --fix`` does."""
    with netns.enter(vm.ns):
        reconcile.reconcile(lab.plan.state_dir(vm), lab.node_bpffs_dir(vm), fix=True)


def public_ip_rows(lab: Lab, out=print) -> bool:
    """VM 2's pod gets a public IP while it runs: the internet host reaches it
    there, and its own traffic arrives from it (FWD_PUBLIC_IP, not SNAT).
    True when both directions worked and the internet saw the public IP."""
    vm = lab.plan.vm(2)
    pod, inet, internet = lab.plan.pod_ns(vm, 1), lab.plan.inet, str(P.INET_IP)
    address = lab.pod_address(vm, 1)
    public = str(fabric_public_ips.assign(lab.plan, address))
    try:
        _learn(lab, vm)
        row_in, inbound = measure(lab, "public IP in", inet, f"{public} ({address})", vm,
                                  lambda: probe.ping(inet, public),
                                  lambda: probe.tcp_transfer(inet, pod, str(address), connect=public))
        row_out, outbound = measure(lab, "public IP out", pod, internet, vm, lambda: probe.ping(pod, internet),
                                    lambda: probe.tcp_transfer(pod, inet, internet))
        seen = asyncio.run(source_seen(inet, (internet, ECHO_PORT), pod, (internet, ECHO_PORT)))
    finally:
        fabric_public_ips.unassign(lab.plan, address)
        _learn(lab, vm)
    out(row_in)
    out(f"{row_out}; the internet saw {seen}")
    return inbound and outbound and seen == public


def load_balancer_row(lab: Lab, out=print) -> bool:
    """The peer VM opens connections to the load balancer's frontend, spread
    over the first pods of both VMs, which see the peer's own address. True
    when every connection worked and both pods had some."""
    backends = {str(lab.pod_address(vm, 1)): lab.plan.pod_ns(vm, 1) for vm in lab.plan.all_vms}
    servers = {ip: EchoServer(ns, ip, ECHO_PORT) for ip, ns in backends.items()}
    frontend = (str(P.LB_FRONTEND), 80)

    async def connections():
        running = [await s.start() for s in servers.values()]
        try:
            fabric_lb.apply(lab.plan, fabric_lb.document("demo", list(backends), frontend[1], ECHO_PORT))
            jobs = [Job(lab.plan.peer, 0, f"c{i}") for i in range(CONNECTIONS)]
            result = await storm(jobs, frontend, concurrency=10)
            await asyncio.sleep(0.2)   # the servers see the last closes
            return result
        finally:
            fabric_lb.delete(lab.plan)
            for server in running:
                server.close()

    result = asyncio.run(connections())
    peer = str(P.PEER_IP)
    split = {ip: sum(1 for s in server.sessions if s.peer[0] == peer) for ip, server in servers.items()}
    note = (f"{CONNECTIONS} connections, 10 at a time: {result.rate:.0f}/s, "
            + " and ".join(f"{n} to {ip}" for ip, n in split.items()) + f", each from {peer} (no SNAT)"
            + (f"; {len(result.failures)} failed" if result.failures else ""))
    out(matrix_line("load balancer", f"{lab.plan.peer} -> {frontend[0]}:{frontend[1]}", "-", "-", note))
    return not result.failures and all(split.values()) and {h for h, _ in result.results} == {peer}
