"""End-to-end fixtures: one lab for the session (torn down also on failure)."""
from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

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

