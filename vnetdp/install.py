"""``vnetdp install``: the CNI entry points and an example conflist on a node,
and the datapath compiled and pinned so that ADD only attaches (a bpffs is
mounted for the pin directory first when none is).

The installed executables ``vnetdp`` and ``vnetdp-ipam`` are both the
compiled entry point (``cni/vnetdp.c``, the name tells the plugin), built here
with this node's defaults (state and pin directories, interface document URL:
runtimes call plugins with an empty environment) and, for calls the agent does
not take, the interpreter that runs vnetdp and ``cni/vnetdp``. Without a C
compiler (or asked to) they are ``cni/vnetdp`` itself, with that interpreter
as their ``#!`` line, where the vnetdp package is, and the same defaults.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vnetdp import plugins
from vnetdp.cni.spec import SUPPORTED_VERSIONS
from vnetdp.defaults import DEFAULT_BPFFS_DIR, DEFAULT_STATE_DIR
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.files import atomic_write

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding vnetdp/
CNI_DIR = PACKAGE_ROOT / "cni"
ENTRY_SOURCE = CNI_DIR / "vnetdp.c"
CFLAGS = ("-O2", "-Wall", "-Wextra")
EXAMPLE_CONFLIST = "10-vnetdp.conflist"
#: What the conflist says unless asked otherwise: containerd 1.6/1.7's libcni and
#: Debian's reference plugins (portmap, tuning) refuse 1.1.0 configs and results.
CONFLIST_VERSION = "1.0.0"


def entry_point_text(defaults: dict[str, str]) -> str:
    """``cni/vnetdp`` with this interpreter (no site-packages until needed),
    the package's location and the node's defaults."""
    body = (CNI_DIR / "vnetdp").read_text().split("\n", 1)[1]
    preamble = [f"#!{sys.executable} -S", "# Installed by vnetdp install: this node's defaults.",
                "import os", "import sys", f"sys.path.insert(0, {str(PACKAGE_ROOT)!r})"]
    preamble += [f"os.environ.setdefault({k!r}, {v!r})" for k, v in sorted(defaults.items())]
    return "\n".join(preamble) + "\n" + body


class EntryPointError(Exception):
    """The compiled entry point cannot be built here (no compiler, or it failed)."""


def c_string(text: str) -> str:
    """``text`` as a C string literal: printable ASCII as it is, any other
    byte as an octal escape."""
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\?' else f"\\{b:03o}"
                         for b in os.fsencode(text)) + '"'


def entry_point_cflags(defaults: dict[str, str]) -> list[str]:
    """What the compiled entry point is built for: this interpreter and
    ``cni/vnetdp`` to run calls in-process, the node's defaults."""
    return [f"-DVNETDP_PYTHON={c_string(sys.executable)}", f"-DVNETDP_ENTRY={c_string(str(CNI_DIR / 'vnetdp'))}",
            "-DVNETDP_DEFAULTS=" + "".join(f"{c_string(f'{k}={v}')}," for k, v in sorted(defaults.items()))]


def compiled_entry_point(defaults: dict[str, str]) -> bytes:
    """``cni/vnetdp.c`` built for this node (``$CC``, else cc or gcc)."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        raise EntryPointError("no C compiler (cc or gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "vnetdp")
        try:
            proc = subprocess.run([*cc, *CFLAGS, "-o", out, str(ENTRY_SOURCE), *entry_point_cflags(defaults)],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EntryPointError(f"{cc[0]} did not run: {e}") from e
        if proc.returncode != 0:
            raise EntryPointError(f"{cc[0]} failed on {ENTRY_SOURCE}: {proc.stderr.strip()[-500:]}")
        with open(out, "rb") as f:
            return f.read()


def entry_point(defaults: dict[str, str], python: bool = False) -> tuple[str | bytes, str]:
    """The plugins' executable and what it is: the compiled entry point, or
    (``python``, or when it cannot be built) ``cni/vnetdp``."""
    if python:
        return entry_point_text(defaults), "Python entry point"
    try:
        return compiled_entry_point(defaults), "compiled entry point"
    except EntryPointError as e:
        return entry_point_text(defaults), f"Python entry point: {e}"


def conflist_text(cni_version: str) -> str:
    """The example conflist (vnetdp, then portmap) saying ``cni_version``."""
    if cni_version not in SUPPORTED_VERSIONS:
        raise ValueError(f"cniVersion {cni_version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    conflist = json.loads((CNI_DIR / "vnetdp.conflist").read_text())
    return json.dumps({**conflist, "cniVersion": cni_version}, indent=2) + "\n"


def install(bin_dir: str = "/opt/cni/bin", conf_dir: str = "/etc/cni/net.d",
            state_dir: str = DEFAULT_STATE_DIR, bpffs_dir: str = DEFAULT_BPFFS_DIR,
            ipam_url: str | None = None, compile_programs: bool = True,
            node_settings: dict | None = None, cni_version: str = CONFLIST_VERSION,
            log_dir: str | None = None, python_entry: bool = False) -> list[str]:
    """Install on this node (``node_settings``: config names and JSON values
    to set, see ``vnetdp.datapath.settings``; ``log_dir``: where the plugins
    log, default /var/log; ``python_entry``: the Python entry point even where
    the compiled one can be built); returns what was written."""
    from vnetdp.datapath import bpffs
    mounted = bpffs.ensure_mounted(bpffs_dir)  # SPEC §10: a node without a bpffs gets one; first: fail fast
    defaults = {"VNETDP_STATE_DIR": state_dir, "VNETDP_BPFFS_DIR": bpffs_dir}
    if ipam_url:
        defaults["VNETDP_IPAM_URL"] = ipam_url
    if log_dir:
        defaults["VNETDP_LOG_DIR"] = log_dir
    written = []
    os.makedirs(bin_dir, exist_ok=True)
    executable, kind = entry_point(defaults, python_entry)
    for name in (plugins.NETWORK, plugins.IPAM):
        path = os.path.join(bin_dir, name)
        atomic_write(path, executable, 0o755)
        written.append(f"{path} ({kind})")
    os.makedirs(conf_dir, exist_ok=True)
    conflist = os.path.join(conf_dir, EXAMPLE_CONFLIST)
    atomic_write(conflist, conflist_text(cni_version))
    written.append(conflist)
    settings_file = NodeSettingsFile(state_dir)
    settings_file.update(node_settings or {})
    written.append(f"{settings_file.path} (node settings)")
    if mounted:
        written.append(f"{mounted} (a bpf filesystem for {bpffs_dir}: none was mounted)")
    if compile_programs:
        from vnetdp.datapath.loader import Programs
        programs = Programs(bpffs.Bpffs(bpffs_dir), state_dir)
        result = programs.load()
        written.append(f"{bpffs_dir}/progs/{result.build} ({'compiled' if result.compiled else 'already pinned'})")
        if result.build != programs.source_build:
            written.append(f"{bpffs_dir}/progs/{result.build} stays the running build: these sources make build "
                           f"{programs.source_build}; switch with 'vnetdp upgrade' (no packet lost)")
    return written
