"""End-to-end fixtures: one lab for the session (torn down also on failure)."""
from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator

import pytest

from lab_pods import Pods
from vnetdp import netns
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.files import atomic_write
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns
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


@pytest.fixture
def pods(lab) -> Iterator[Pods]:
    p = Pods(lab)
    yield p
    p.cleanup()


@pytest.fixture
def node_set(lab) -> Iterator:
    """node_set(vm, KEY=VALUE, ...): change a VM's node settings with
    ``vnetdp node set``, as an operator does; put back afterwards."""
    changed: dict = {}

    def node_set(vm, **settings) -> None:
        path = NodeSettingsFile(lab.plan.state_dir(vm)).path
        if vm.name not in changed:
            with open(path) as f:
                changed[vm.name] = (vm, f.read())
        in_ns(vm.ns, [sys.executable, "-m", "vnetdp.cli", "node", "set",
                      *(f"{k}={json.dumps(v)}" for k, v in settings.items()),
                      "--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)])

    yield node_set
    for vm, text in changed.values():
        atomic_write(NodeSettingsFile(lab.plan.state_dir(vm)).path, text)
        with netns.enter(vm.ns):
            lab.node(vm).configure()
