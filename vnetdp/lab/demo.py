"""``vnetdp-lab demo``: a lab, pods on two VMs, the connectivity matrix with
what each path measured and which datapath counters it moved, then teardown."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vnetdp.lab import fabric, fabric_nsg, probe
from vnetdp.lab import plan as P
from vnetdp.lab.observe import bridges, counters
from vnetdp.lab.topology import Lab


@dataclass(frozen=True)
class Path:
    name: str
    src_ns: str
    dst_ns: str
    dst: str
    vm: P.Vm          # whose counters tell the story


def matrix_paths(lab: Lab) -> list[Path]:
    p = lab.plan
    vm1, vm2 = p.vm(1), p.vm(2)
    pod = lambda vm, j: p.pod_ns(vm, j)  # noqa: E731
    ip = lambda vm, j: str(lab.pod_address(vm, j))  # noqa: E731
    return [
        Path("pod-pod same VM", pod(vm1, 1), pod(vm1, 2), ip(vm1, 2), vm1),
        Path("pod-pod across VMs", pod(vm1, 1), pod(vm2, 1), ip(vm2, 1), vm1),
        Path("pod-peer VM", pod(vm1, 1), p.peer, str(P.PEER_IP), vm1),
        Path("host-pod", vm1.ns, pod(vm1, 1), ip(vm1, 1), vm1),
        Path("pod-internet", pod(vm1, 1), p.inet, str(P.INET_IP), vm1),
        Path("pod-peered VNet", pod(vm1, 1), p.host_ns(P.PEERED_VM), str(P.PEERED_VM.ip), vm1),
    ]


#: the NSG row's group: TCP to iperf's port denied into VM 2's NIC; ping still allowed
DEMO_NSG = {"name": "demo", "properties": {"securityRules": [{"name": "deny-iperf", "properties": {
    "priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
    "sourceAddressPrefix": "VirtualNetwork", "sourcePortRange": "*",
    "destinationAddressPrefix": "*", "destinationPortRange": str(probe.IPERF_PORT)}}]}}


def matrix_line(name: str, path: str, ms: str, gbps: str, note: str) -> str:
    """One line of the matrix, in its columns."""
    return f"{name:<20} {path:<40} {ms:>8} {gbps:>10}  {note}"


HEADER = matrix_line("path", "from -> to", "ping ms", "TCP Gbit/s", "datapath counters moved")


def measure(lab: Lab, name: str, src: str, dst: str, vm: P.Vm, ping: Callable[[], probe.ProbeResult],
            tcp: Callable[[], probe.ProbeResult] | None) -> tuple[str, bool]:
    """One row of the matrix: ``ping``, then ``tcp`` if it pinged (None: no TCP
    measured on this path, shown as "-"), with the counters this moved on
    ``vm``'s datapath and what the fabric dropped meanwhile; and whether the
    path worked (every reply back, and the TCP transfer when there is one)."""
    before = counters(lab, vm)
    fab_before = fabric.drops(lab.plan)
    pinged = ping()
    transfer = tcp() if tcp is not None and pinged.ok else None
    moved = counters(lab, vm) - before
    fab_moved = {k: v - fab_before.get(k, 0) for k, v in fabric.drops(lab.plan).items()
                 if v != fab_before.get(k, 0)}
    works = pinged.ok and (tcp is None or (transfer is not None and transfer.ok))
    note = ", ".join(f"{k}+{v}" for k, v in sorted(moved.items()))
    if fab_moved:
        note += f" (fabric dropped: {fab_moved})"
    ms = f"{pinged.value:.3f}" if pinged.ok and pinged.value is not None else "FAIL"
    gbps = f"{transfer.value:.2f}" if transfer and transfer.ok else "-"
    return matrix_line(name, f"{src} -> {dst}", ms, gbps, note), works


def pod_rows(lab: Lab, out=print) -> bool:
    """The pods' matrix rows; True when every path worked."""
    all_ok = True
    for path in matrix_paths(lab):
        row, works = measure(lab, path.name, path.src_ns, path.dst, path.vm,
                             lambda: probe.ping(path.src_ns, path.dst),
                             lambda: probe.tcp_transfer(path.src_ns, path.dst_ns, path.dst))
        out(row)
        all_ok &= works
    return all_ok


def nsg_row(lab: Lab, out=print) -> bool:
    """The across-VMs path under a fabric NSG on VM 2's NIC that denies TCP to
    iperf's port: True when ping passed and the fabric dropped the TCP."""
    path = next(p for p in matrix_paths(lab) if p.name == "pod-pod across VMs")
    counter = fabric_nsg.counter_name(DEMO_NSG["name"], "deny-iperf")
    fabric_nsg.apply(lab.plan, DEMO_NSG, nics=[lab.plan.vm(2).name])
    try:
        row, works = measure(lab, "NSG denies TCP", path.src_ns, path.dst, path.vm,
                             lambda: probe.ping(path.src_ns, path.dst),
                             lambda: probe.tcp_transfer(path.src_ns, path.dst_ns, path.dst))
        blocked = fabric.counters(lab.plan).get(counter, 0) > 0
    finally:
        fabric_nsg.delete(lab.plan, DEMO_NSG["name"])
    out(row)
    return not works and blocked and probe.ping(path.src_ns, path.dst, count=1).ok


def run_demo(lab_id: str = "", pool: int = 30, out=print, pods: bool = True, docker: bool = False) -> bool:
    """Run the demo; True when every path that should work did. ``pods``: the
    pods' rows; ``docker``: a Docker container's rows on VM 1 (``vnetdp-lab
    demo --docker``; alone: ``vnetdp-lab docker-demo``)."""
    if docker:
        from vnetdp.lab import docker_demo

        docker_demo.check_host()   # before any lab is built
    lab = Lab(P.Plan(lab_id, vms=2, pool=pool))
    lab.up()
    try:
        for vm, j in [(lab.plan.vm(1), 1), (lab.plan.vm(1), 2), (lab.plan.vm(2), 1)]:
            lab.add_pod(vm, j)
        out(f"lab up: 2 VMs with {pool} secondary addresses each, peer {P.PEER_IP}, "
            f"peered VNet {P.PEERED_VNET} (VM {P.PEERED_VM.ip}), internet {P.INET_IP}")
        out(HEADER)
        all_ok = True
        if pods:
            from vnetdp.lab import demo_features

            all_ok = (pod_rows(lab, out) & nsg_row(lab, out) & demo_features.public_ip_rows(lab, out)
                      & demo_features.load_balancer_row(lab, out))
        if docker:
            all_ok &= docker_demo.container_rows(lab, out)
        for vm in lab.plan.all_vms:
            out(f"\n{vm.name} datapath counters (packets by reason):")
            for name, packets in sorted(counters(lab, vm).items()):
                out(f"  {name:<24} {packets}")
        out(f"\nfabric drops: {fabric.drops(lab.plan)}")
        found = bridges(lab)
        out(f"Linux bridges in the lab: {', '.join(found) if found else 'none'}")
        return all_ok and not found
    finally:
        removed = lab.down()
        out(f"\nlab down: removed {len(removed)} objects")
