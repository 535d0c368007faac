"""``vnetdp install``: the CNI entry points and an example conflist on a node,
and the datapath compiled and pinned so that ADD only attaches.

The installed executables ``vnetdp`` and ``vnetdp-ipam`` are both
``cni/vnetdp`` (the name tells the plugin) with the interpreter that runs vnetdp as their ``#!`` line and this node's defaults
(state and pin directories, interface document URL) set in them: runtimes call
plugins with an empty environment.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from vnetdp.paths import DEFAULT_BPFFS_DIR, DEFAULT_STATE_DIR

CNI_DIR = Path(__file__).resolve().parent.parent / "cni"
ENTRY_POINTS = ("vnetdp", "vnetdp-ipam")
EXAMPLE_CONFLIST = "10-vnetdp.conflist"


def entry_point_text(defaults: dict[str, str]) -> str:
    """``cni/vnetdp`` with this interpreter (no site-packages until needed) and defaults."""
    body = (CNI_DIR / "vnetdp").read_text().split("\n", 1)[1]
    preamble = [f"#!{sys.executable} -S", "# Installed by vnetdp install: this node's defaults.", "import os"]
    preamble += [f"os.environ.setdefault({k!r}, {v!r})" for k, v in sorted(defaults.items())]
    return "\n".join(preamble) + "\n" + body


def _write(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(bin_dir: str = "/opt/cni/bin", conf_dir: str = "/etc/cni/net.d",
            state_dir: str = DEFAULT_STATE_DIR, bpffs_dir: str = DEFAULT_BPFFS_DIR,
            ipam_url: str | None = None, compile_programs: bool = True) -> list[str]:
    """Install on this node; returns what was written."""
    defaults = {"VNETDP_STATE_DIR": state_dir, "VNETDP_BPFFS_DIR": bpffs_dir}
    if ipam_url:
        defaults["VNETDP_IPAM_URL"] = ipam_url
    written = []
    os.makedirs(bin_dir, exist_ok=True)
    for name in ENTRY_POINTS:
        path = os.path.join(bin_dir, name)
        _write(path, entry_point_text(defaults), 0o755)
        written.append(path)
    os.makedirs(conf_dir, exist_ok=True)
    conflist = os.path.join(conf_dir, EXAMPLE_CONFLIST)
    shutil.copyfile(CNI_DIR / "vnetdp.conflist", conflist)
    written.append(conflist)
    if compile_programs:
        from vnetdp.datapath.bpffs import Bpffs
        from vnetdp.datapath.loader import Datapath
        result = Datapath(Bpffs(bpffs_dir), state_dir).ensure_loaded()
        written.append(f"{bpffs_dir}/progs/{result.build} ({'compiled' if result.compiled else 'already pinned'})")
    return written
