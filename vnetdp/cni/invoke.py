"""Calling the IPAM plugin that ``ipam.type`` names, as the CNI spec says:
the executable of that name in CNI_PATH, the same CNI_* environment, the
network configuration on stdin. ``vnetdp-ipam`` runs in-process instead
(identical code, one process less)."""
from __future__ import annotations

import json
import os
import subprocess

from vnetdp.cni.spec import CniError, Code, Env

TIMEOUT_S = 60


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    if "/" in name:
        raise CniError(Code.INVALID_CONFIG, f"ipam.type {name!r} must be a plugin name, not a path")
    for d in path:
        exe = os.path.join(d, name)
        if os.access(exe, os.X_OK):
            return exe
    raise CniError(Code.INVALID_CONFIG, f"IPAM plugin {name!r} not found in CNI_PATH ({':'.join(path) or 'empty'})")


def call_ipam(env: Env, conf: dict, command: str | None = None) -> dict | None:
    """Run ``command`` (default: env's) of the configured IPAM plugin; its result or None."""
    command = command or env.command
    name = conf["ipam"]["type"]
    if name == "vnetdp-ipam":
        from vnetdp.ipam import plugin
        return plugin.handle(Env(command, env.container_id, env.netns, env.ifname, env.args, env.path), conf)
    exe = find_plugin(name, env.path)
    cni_env = {"CNI_COMMAND": command, "CNI_CONTAINERID": env.container_id, "CNI_NETNS": env.netns,
               "CNI_IFNAME": env.ifname, "CNI_PATH": ":".join(env.path),
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in env.args.items())}
    try:
        proc = subprocess.run([exe], input=json.dumps(conf).encode(), capture_output=True,
                              env={k: v for k, v in cni_env.items() if v}, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(Code.DELEGATE_FAILED, f"IPAM plugin {name} could not run: {e}")
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        out = None
    if proc.returncode != 0:
        if isinstance(out, dict) and "code" in out:
            raise CniError(out["code"], f"{name}: {out.get('msg', '')}", out.get("details", ""))
        raise CniError(Code.DELEGATE_FAILED, f"IPAM plugin {name} failed (exit {proc.returncode})",
                       proc.stderr.decode(errors="replace")[-500:])
    return out
