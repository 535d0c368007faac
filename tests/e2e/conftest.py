"""End-to-end fixtures: one lab for the session (torn down also on failure),
and helpers to read its counters."""
from __future__ import annotations

import collections
import secrets
from collections.abc import Iterator

import pytest

from vnetdp import netns
from vnetdp.datapath.reasons import describe
from vnetdp.lab import plan as P
from vnetdp.lab.topology import Lab


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab = Lab(P.Plan(secrets.token_hex(2), vms=2, pool=10))
    lab.up()
    try:
        vm1, vm2 = lab.plan.all_vms
        for vm, j in [(vm1, 1), (vm1, 2), (vm2, 1)]:
            lab.add_pod(vm, j)
        yield lab
    finally:
        lab.down()


def reason_counts(lab: Lab, vm: P.Vm) -> collections.Counter:
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        c: collections.Counter = collections.Counter()
        for metric in m.metrics():
            c[describe(metric.reason).name] += metric.packets
        return c
