"""Reading a running lab: a VM's datapath counters and the lab's Linux bridges.

Shared by the demo, the end-to-end tests and the benchmark harness."""
from __future__ import annotations

import collections

from vnetdp import netns
from vnetdp.datapath.reasons import describe
from vnetdp.lab import plan as P
from vnetdp.lab.shell import run
from vnetdp.lab.topology import Lab, lab_namespaces


def counters(lab: Lab, vm: P.Vm) -> collections.Counter:
    """Packets per reason name on one VM's datapath."""
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        total: collections.Counter = collections.Counter()
        for metric in m.metrics():
            total[describe(metric.reason).name] += metric.packets
        return total


def bridges(lab: Lab) -> list[str]:
    """Every Linux bridge in any lab namespace (the datapath uses none)."""
    found = []
    for ns in lab_namespaces(lab.plan.prefix):
        out = run(["ip", "-n", ns, "-o", "link", "show", "type", "bridge"]).stdout.strip()
        found += [f"{ns}:{line.split(':')[1].strip()}" for line in out.splitlines() if line]
    return found
