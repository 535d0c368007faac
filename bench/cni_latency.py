"""CNI ADD and DEL latency: vnetdp's installed plugin against the reference
``bridge`` + ``host-local`` plugins (Debian's containernetworking-plugins),
each called as a runtime calls it, in a lab VM namespace; and the wall time
of many ADDs started at once. For vnetdp, also each call's phases as the
plugin timed them inside itself (its call spool, ``vnetdp.cni.logs``): the
call's wall time less the plugin's ``total`` is the entry point's start-up
and the hand-off to the agent."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict

from bench.topologies import Vnetdp
from vnetdp import netns
from vnetdp.cni import logs
from vnetdp.lab import cni
from vnetdp.lab.shell import ip_batch, run

REFERENCE_DIR = "/usr/lib/cni"
#: The phases of an ADD, in the order they run ("total": the whole call inside the plugin).
#: DEL has "endpoint" and "ipam".
PHASES = ("ipam", "node", "veth", "addresses", "attach", "total")


class Reference:
    """The reference bridge plugin on a node namespace of its own."""

    def __init__(self) -> None:
        self.node = f"vnd{secrets.token_hex(2)}-refnode"
        self.data = tempfile.mkdtemp(prefix="vnd-bench-hostlocal-")
        self.conf = {"cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0",
                     "isGateway": True, "ipMasq": True,
                     "ipam": {"type": "host-local", "subnet": "10.99.0.0/16", "dataDir": self.data}}

    def up(self) -> None:
        run(["ip", "netns", "add", self.node])
        ip_batch(self.node, ["link set lo up"])

    def pod(self, j: int) -> str:
        return f"{self.node}-p{j}"

    def call(self, command: str, j: int) -> cni.CniCall:
        return cni.invoke(self.node, REFERENCE_DIR, command, self.conf, container_id=self.pod(j),
                          pod_netns=netns.path_of(self.pod(j)), plugin="bridge",
                          extra_env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def spool(self) -> None:
        """The reference plugins time no phases."""
        return None

    def start(self, command: str, j: int) -> subprocess.Popen:
        return _start(self.node, os.path.join(REFERENCE_DIR, "bridge"), self.conf, command, self.pod(j),
                      {"CNI_PATH": REFERENCE_DIR, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def down(self) -> None:
        out = run(["ip", "netns", "list"]).stdout
        for line in out.splitlines():
            if line.split()[0].startswith(self.node):
                run(["ip", "netns", "del", line.split()[0]], check=False)
        shutil.rmtree(self.data, ignore_errors=True)


class Ours:
    """vnetdp's plugin on a lab VM (through the node agent, as installed)."""

    def __init__(self, topology: Vnetdp) -> None:
        self.t = topology
        self.base = 1000

    def pod(self, j: int) -> str:
        return self.t.lab.plan.pod_ns(self.t.vm, self.base + j)

    def call(self, command: str, j: int) -> cni.CniCall:
        return self.t.lab.cni(self.t.vm, command, self.t.conf, container_id=self.pod(j),
                              pod_netns=netns.path_of(self.pod(j)))

    def start(self, command: str, j: int) -> subprocess.Popen:
        return _start(self.t.vm.ns, os.path.join(self.t.lab.cni_bin_dir(self.t.vm), "vnetdp"), self.t.conf,
                      command, self.pod(j), {"CNI_PATH": self.t.lab.cni_bin_dir(self.t.vm)})

    def spool(self) -> logs.SpoolReader:
        """The VM's call spool, read from now on (what earlier calls left is skipped)."""
        reader = logs.SpoolReader(logs.CallSpool(self.t.lab.plan.state_dir(self.t.vm)))
        reader.read()
        return reader


def _start(node_ns: str, exe: str, conf: dict, command: str, pod: str, env: dict) -> subprocess.Popen:
    stdin = tempfile.TemporaryFile()
    stdin.write(json.dumps(conf).encode())
    stdin.seek(0)
    with stdin, netns.enter(node_ns):  # the child starts in this thread's namespace: no slow preexec_fn fork
        return subprocess.Popen([exe], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"CNI_COMMAND": command, "CNI_CONTAINERID": pod, "CNI_NETNS": netns.path_of(pod),
                                     "CNI_IFNAME": "eth0", **env})


def _netns(names: list[str]) -> None:
    ip_batch(None, [f"netns add {n}" for n in names])


def latency(plugin, n: int) -> dict:
    """n sequential ADDs then n DELs; seconds of each call, and for a plugin
    that times them, ``phases``: command -> phase -> seconds of each call."""
    pods = [plugin.pod(j) for j in range(n)]
    _netns(pods)
    spool = plugin.spool()
    adds, dels = [], []
    for j in range(n):
        call = plugin.call("ADD", j)
        if not call.ok:
            raise RuntimeError(f"ADD failed: {call.output}")
        adds.append(call.seconds)
    for j in range(n):
        dels.append(plugin.call("DEL", j).seconds)
    ip_batch(None, [f"netns del {pod}" for pod in pods])
    out = {"add_s": adds, "del_s": dels}
    if spool is not None:
        out["phases"] = _phases(spool.read(), set(pods))
    return out


def _phases(records: list[dict], pods: set[str]) -> dict[str, dict[str, list[float]]]:
    """command -> phase -> seconds, from the plugin's records of its successful calls for ``pods``."""
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("container_id") in pods and r.get("result") == "ok":
            for name, seconds in r.get("phases", {}).items():
                found[r["command"]][name].append(seconds)
    return {command: dict(phases) for command, phases in found.items()}


def parallel_adds(plugin, n: int) -> dict:
    """Wall time of n ADDs started at once (then n DELs at once, not timed)."""
    _netns([plugin.pod(j) for j in range(n)])
    begin = time.monotonic()
    procs = [plugin.start("ADD", j) for j in range(n)]
    ok = sum(p.communicate()[0] is not None and p.returncode == 0 for p in procs)
    wall = time.monotonic() - begin
    for p in [plugin.start("DEL", j) for j in range(n)]:
        p.communicate()
    ip_batch(None, [f"netns del {plugin.pod(j)}" for j in range(n)])
    return {"n": n, "wall_s": wall, "succeeded": ok}
