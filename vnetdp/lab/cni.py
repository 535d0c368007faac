"""Calling the installed CNI plugins inside a lab VM, exactly as a runtime
does: a clean environment with the CNI_* variables and the network
configuration on stdin."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

from vnetdp import netns
from vnetdp.lab import nmagent
from vnetdp.lab import plan as P


@dataclass(frozen=True)
class CniCall:
    returncode: int
    output: dict | None
    seconds: float
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def code(self) -> int | None:
        return (self.output or {}).get("code") if not self.ok else None


def network_config(name: str = "vnetdp", version: str = "1.1.0", **fields) -> dict:
    """The lab's network configuration for the vnetdp plugin (one conflist entry)."""
    return {"cniVersion": version, "name": name, "type": "vnetdp", "master": "eth0",
            "ipam": {"type": "vnetdp-ipam"}, **fields}


def invoke(vm_ns: str, bin_dir: str, command: str, conf: dict | bytes | str, container_id: str = "",
           pod_netns: str = "", ifname: str = "eth0", args: str = "", plugin: str = "vnetdp",
           extra_path: tuple[str, ...] = (), agent: bool = True, extra_env: dict | None = None,
           timeout: float = 120) -> CniCall:
    """Run a plugin with nothing but the CNI variables in its environment (and
    ``extra_env``); ``agent=False`` makes vnetdp run the call itself."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": pod_netns,
           "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join((bin_dir, *extra_path)),
           "VNETDP_NO_AGENT": "" if agent else "1", **(extra_env or {})}
    stdin = conf if isinstance(conf, bytes) else (conf if isinstance(conf, str) else json.dumps(conf)).encode()
    with netns.enter(vm_ns):  # the child starts in this thread's namespace (no preexec_fn: no slow fork)
        start = time.perf_counter()
        proc = subprocess.run([os.path.join(bin_dir, plugin)], input=stdin, capture_output=True,
                              env={k: v for k, v in env.items() if v}, timeout=timeout)
        seconds = time.perf_counter() - start
    try:
        output = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        output = {"unparsable": proc.stdout.decode(errors="replace")}
    return CniCall(proc.returncode, output, seconds, proc.stderr.decode(errors="replace"))


def nmagent_url() -> str:
    return f"http://127.0.0.1:{P.NMAGENT_PORT}{nmagent.PATH}"


def metadata_url() -> str:
    """The VM's instance metadata network document, as its node setting ``metadataUrl`` names it."""
    return f"http://127.0.0.1:{P.NMAGENT_PORT}{nmagent.METADATA_PATH}?{nmagent.METADATA_QUERY}"
