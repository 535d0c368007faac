"""Fixtures of the unit tests (shared constants and helpers: helpers.py)."""
from __future__ import annotations

import pytest

from vnetdp.cni import invoke


@pytest.fixture(autouse=True)
def in_process(monkeypatch) -> dict:
    """invoke's registry of in-process plugins, empty for each test and
    restored after it (``vnetdp.plugins.run`` registers vnetdp-ipam there)."""
    registry: dict = {}
    monkeypatch.setattr(invoke, "_IN_PROCESS", registry)
    return registry


@pytest.fixture(autouse=True)
def log_dir(monkeypatch, tmp_path) -> str:
    """Plugin calls log under the test's directory, never the host's /var/log."""
    monkeypatch.setenv("VNETDP_LOG_DIR", str(tmp_path))
    return str(tmp_path)
