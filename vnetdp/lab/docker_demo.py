"""A Docker container in the demo's matrix (``vnetdp-lab docker-demo``, and
``vnetdp-lab demo --docker`` after the pods' rows): dockerd and vnetdp's
plugin on VM 1 (vnetdp/lab/docker.py), a vnetdp network with ``--subnet`` the
VNet (Docker 20.10 needs it), one busybox container. Its rows ping from
inside the container (busybox has no iperf3: no TCP column) and show the
counters each path moved on VM 1; then its address, and who holds which
address in VM 1's IPAM store as ``vnetdp ipam show`` prints it (the container's
``docker``, the pods' ``cni``). Docker is torn down again, also on failure."""
from __future__ import annotations

import collections
import ipaddress
import json
import sys

from vnetdp.ipam.store import CNI, DOCKER
from vnetdp.lab import docker as dk
from vnetdp.lab import plan as P
from vnetdp.lab.demo import measure
from vnetdp.lab.shell import run
from vnetdp.lab.topology import Lab

CONTAINER = "demo"


def check_host() -> None:
    """Fails, saying what to install, when the host cannot run Docker in a lab VM."""
    missing = dk.missing_tools()
    if missing:
        raise RuntimeError(f"Docker in the lab needs {', '.join(missing)}")


def container_paths(lab: Lab) -> list[tuple[str, str]]:
    """(row name, destination) of the container's paths; it runs on VM 1."""
    vm1, vm2 = lab.plan.vm(1), lab.plan.vm(2)
    return [
        ("docker-pod same VM", str(lab.pod_address(vm1, 1))),
        ("docker-pod other VM", str(lab.pod_address(vm2, 1))),
        ("docker-peer VM", str(P.PEER_IP)),
        ("docker-internet", str(P.INET_IP)),
    ]


def container_rows(lab: Lab, out=print) -> bool:
    """Docker up on VM 1 with one container, its matrix rows, its address and
    the IPAM owners, Docker down; True when every path worked, ownership is
    right and the teardown had nothing to force."""
    vm1 = lab.plan.vm(1)
    ok = False
    with dk.etc_docker_mountpoint():
        node = dk.DockerNode.for_vm(lab, vm1)
        try:
            node.bring_up()
            node.create_network()
            node.run_container(CONTAINER)
            ok = True
            for name, dst in container_paths(lab):
                row, works = measure(lab, name, f"{vm1.ns}:{CONTAINER}", dst, vm1,
                                     lambda: node.ping_probe(CONTAINER, dst, interval=0.2), None)
                out(row)
                ok &= works
            ok &= ownership(lab, node, out)
        finally:
            problems = dk.teardown([node])
            for problem in problems:
                out(f"docker teardown: {problem}")
    return ok and not problems


def ownership(lab: Lab, node: dk.DockerNode, out=print) -> bool:
    """The container's address, and VM 1's IPAM store as ``vnetdp ipam show``
    prints it: each address held once, the container's by Docker (its endpoint,
    ``docker:<network ID>``), the pods' by CNI; True when all of that holds."""
    vm1 = node.vm
    address, endpoint = node.address(CONTAINER), node.endpoint_id(CONTAINER)
    network = f"docker:{node.network_id()}"
    out(f"\ncontainer {CONTAINER} on {vm1.name}: {address} (network {dk.NETWORK}, endpoint {endpoint[:12]})")
    state_dir = lab.plan.state_dir(vm1)
    shown = json.loads(run([sys.executable, "-m", "vnetdp.cli", "ipam", "show", "--state-dir", state_dir]).stdout)
    allocations = shown["allocations"]
    out(f"vnetdp ipam show --state-dir {state_dir}:")
    for a in sorted(allocations, key=lambda a: ipaddress.IPv4Address(a["address"])):
        out(f"  {a['address']:<15} {a.get('owner', CNI):<7} {a['container_id'][:24]:<24} {a['network']}")
    by_address = {a["address"]: a for a in allocations}
    expected = [(address, DOCKER, endpoint, network),
                *((str(lab.pod_address(vm1, j)), CNI, lab.plan.pod_ns(vm1, j), None) for j in (1, 2))]
    wrong = [f"{a} held {n} times" for a, n in collections.Counter(a["address"] for a in allocations).items()
             if n > 1]
    if address not in {str(a) for a in vm1.secondaries(lab.plan.pool)}:
        wrong.append(f"{address} is not a secondary address of {vm1.name}'s NIC")
    for addr, owner, holder, net in expected:
        got = by_address.get(addr)
        if got is None:
            wrong.append(f"{addr} is not in the store")
        elif (got.get("owner", CNI), got["container_id"]) != (owner, holder) or net not in (None, got["network"]):
            wrong.append(f"{addr} is held by {got.get('owner', CNI)} {got['container_id']} ({got['network']}), "
                         f"not {owner} {holder}" + (f" ({net})" if net else ""))
    out("ownership: " + ("; ".join(wrong) if wrong else
                         f"ok ({address}: docker, endpoint {endpoint[:12]}; pods' addresses: cni)"))
    return not wrong
