"""A lab leaves nothing behind: namespaces, links, bpffs mounts, processes."""
from __future__ import annotations

import os
import secrets

import pytest

from vnetdp.lab import plan as P
from vnetdp.lab.shell import run
from vnetdp.lab.topology import Lab, LabError, lab_namespaces


def _mounts_under(path: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path)]


def test_down_removes_every_trace(tmp_path):
    lab = Lab(P.Plan(secrets.token_hex(2), vms=2, pool=4))
    root_links_before = run(["ip", "-o", "link", "show"]).stdout
    lab.up()
    try:
        lab.add_pod(lab.plan.vm(1), 1)
        pids = [pid for pid, _ in lab._state()["pids"]]
        assert len(pids) == 4 and all(os.path.exists(f"/proc/{p}") for p in pids)
        assert _mounts_under(lab.plan.dir)
        with pytest.raises(LabError, match="already up"):
            lab.up()
    finally:
        lab.down()
    assert lab_namespaces(lab.plan.prefix) == []
    assert _mounts_under(lab.plan.dir) == []
    assert not os.path.exists(lab.plan.dir)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    # The root namespace never saw a lab interface.
    assert run(["ip", "-o", "link", "show"]).stdout == root_links_before
