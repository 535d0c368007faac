"""Calling another plugin (a delegate, e.g. the IPAM plugin that ``ipam.type``
names) as the CNI spec says: the executable of that name in CNI_PATH, the
same CNI_* environment, the network configuration on stdin. A plugin
registered in-process (``register``) runs as a function call instead: the
same code as its executable, one process less."""
from __future__ import annotations

import json
import os
import subprocess

from vnetdp.cni.skel import Handler
from vnetdp.cni.spec import CniError, Code, Env

TIMEOUT_S = 60
#: Carried to every delegate: a chain of delegations deeper than MAX_DEPTH is a
#: loop (a plugin that, directly or not, calls back into its caller).
DEPTH_VAR = "VNETDP_DELEGATION_DEPTH"
MAX_DEPTH = 4
#: A line in vnetdp's own entry point: such an executable is never a delegate
#: (vnetdp's plugins run in-process), whatever it is named or linked as.
SELF_MARKER = b"vnetdp-cni-entry-point"
_IN_PROCESS: dict[str, Handler] = {}


def register(name: str, handler: Handler) -> None:
    """Run delegate ``name`` in this process from now on."""
    _IN_PROCESS[name] = handler


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    if "/" in name:
        raise CniError(Code.INVALID_CONFIG, f"plugin type {name!r} must be a plugin name, not a path")
    for d in path:
        exe = os.path.join(d, name)
        if os.access(exe, os.X_OK):
            return exe
    raise CniError(Code.INVALID_CONFIG, f"plugin {name!r} not found in CNI_PATH ({':'.join(path) or 'empty'})")


def _refuse_self(name: str, exe: str) -> None:
    """A delegate that is vnetdp itself (by name or through any link) would
    call back into the caller without end."""
    real = os.path.realpath(exe)
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return
    if SELF_MARKER in head:
        raise CniError(Code.INVALID_CONFIG, f"plugin {name!r} ({real}) is vnetdp itself: it cannot be its "
                                            "own delegate", "for vnetdp's IPAM set ipam.type to vnetdp-ipam")


def _depth() -> int:
    try:
        return int(os.environ.get(DEPTH_VAR, "0"))
    except ValueError:
        return MAX_DEPTH


def delegate(name: str, env: Env, conf: dict, command: str | None = None) -> dict | None:
    """Run ``command`` (default: env's) of plugin ``name``; its result or None."""
    command = command or env.command
    if name in _IN_PROCESS:
        return _IN_PROCESS[name](Env(command, env.container_id, env.netns, env.ifname, env.args, env.path),
                                 conf)
    exe = find_plugin(name, env.path)
    _refuse_self(name, exe)
    depth = _depth()
    if depth >= MAX_DEPTH:
        raise CniError(Code.INVALID_CONFIG, f"delegating to {name!r} would nest {depth + 1} plugin calls deep: "
                                            "the delegates call each other in a loop")
    cni_env = {"CNI_COMMAND": command, "CNI_CONTAINERID": env.container_id, "CNI_NETNS": env.netns,
               "CNI_IFNAME": env.ifname, "CNI_PATH": ":".join(env.path),
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in env.args.items()), DEPTH_VAR: str(depth + 1)}
    try:
        proc = subprocess.run([exe], input=json.dumps(conf).encode(), capture_output=True,
                              env={k: v for k, v in cni_env.items() if v}, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(Code.DELEGATE_FAILED, f"plugin {name} could not run: {e}")
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        out = None
    if proc.returncode != 0:
        if isinstance(out, dict) and "code" in out:
            raise CniError(out["code"], f"{name}: {out.get('msg', '')}", out.get("details", ""))
        raise CniError(Code.DELEGATE_FAILED, f"plugin {name} failed (exit {proc.returncode})",
                       proc.stderr.decode(errors="replace")[-500:])
    return out
