"""Layering, as imports: the CNI protocol library loads neither plugin, the
IPAM plugin loads nothing of the network plugin, and the agent's framing (the
first thing every CNI call imports) loads only C modules and ``os``. Each
check runs in a fresh interpreter: this one has loaded everything."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

# Prints what importing the modules named in argv loaded, as JSON: each new
# module's name, and whether it is a C module (built in, or an extension
# module). ``os`` is imported first, and what it loads is left out.
_PROBE = """
import sys
import os
before = set(sys.modules)
for name in sys.argv[1:]:
    __import__(name)
def is_c(m):
    spec = getattr(sys.modules[m], "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    return m in sys.builtin_module_names or origin.endswith(".so")
found = {m: is_c(m) for m in sorted(set(sys.modules) - before)}
import json
print(json.dumps(found))
"""


def loaded(*modules: str, flags: tuple[str, ...] = ()) -> dict[str, bool]:
    proc = subprocess.run([sys.executable, *flags, "-c", _PROBE, *modules], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def under(names, *packages: str) -> list[str]:
    return [m for m in names if any(m == p or m.startswith(p + ".") for p in packages)]


def test_the_probe_sees_what_an_import_loads():
    assert under(loaded("vnetdp.plugins", "vnetdp.network.commands"), "vnetdp.network") != []
    assert loaded("json")["json"] is False and loaded("_json")["_json"] is True


@pytest.mark.parametrize("module", ["vnetdp.cni", "vnetdp.cni.spec", "vnetdp.cni.skel", "vnetdp.cni.invoke"])
def test_the_protocol_library_loads_neither_plugin(module):
    names = loaded(module)
    assert module in names
    assert under(names, "vnetdp.network", "vnetdp.ipam", "vnetdp.plugins", "vnetdp.datapath") == []


def test_the_ipam_plugin_loads_nothing_of_the_network_plugin():
    names = loaded("vnetdp.ipam.plugin")
    assert "vnetdp.ipam.store" in names
    assert under(names, "vnetdp.network", "vnetdp.plugins", "vnetdp.datapath", "pyroute2") == []


def test_the_framing_loads_only_c_modules_and_os():
    """As the entry point starts: without site-packages (-S)."""
    names = loaded("vnetdp.agent.wire", flags=("-S",))
    assert "vnetdp.agent.wire" in names
    others = [m for m, c_module in names.items() if not c_module and under([m], "vnetdp") == []]
    assert others == []
    assert not {"pathlib", "json", "socket", "subprocess", "logging"} & names.keys()
    assert sorted(under(names, "vnetdp")) == ["vnetdp", "vnetdp.agent", "vnetdp.agent.wire"]


def test_the_entry_points_defaults_load_only_os():
    """The entry point's other import before it picks agent or in-process."""
    names = loaded("vnetdp.defaults", flags=("-S",))
    assert sorted(names) == ["vnetdp", "vnetdp.defaults"]
