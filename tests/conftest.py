"""Fixtures shared by every test layer: root check, private bpffs mounts."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from vnetdp.datapath import bpffs


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (bpf, namespaces)")
        for item in items:
            if "unit" not in item.nodeid:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bpffs_mount() -> Iterator[str]:
    """A private bpffs instance for the session, unmounted and removed afterwards."""
    top = tempfile.mkdtemp(prefix="vnd-test-")
    path = os.path.join(top, "bpffs")
    bpffs.mount(path)
    try:
        yield path
    finally:
        bpffs.unmount(path)
        shutil.rmtree(top, ignore_errors=True)
