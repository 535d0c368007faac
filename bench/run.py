"""``vnetdp-lab bench``: build every topology, measure interleaved (A B C D, A B C
D, ...) over rounds, write JSON, Markdown and charts.

Modes: ``tiny`` (the test suite's: one round, one second, proves each
topology's datapath carried the traffic), ``quick`` (under 5 minutes here),
``full`` (under 30)."""
from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from bench import cni_latency, metrics, progcost, report
from bench import topologies as T

TOPOLOGIES = ["direct", "bridge", "vnetdp-tc", "vnetdp-xdp"]


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    seconds: int
    metrics: tuple[str, ...]
    connections: int            # per round, through SNAT (internet path)
    scale: tuple[int, ...]      # pods present on the node
    scale_rounds: int
    cni_calls: int              # sequential ADD/DEL pairs per plugin
    parallel: tuple[int, ...]   # parallel ADD wall times
    prog_repeat: int


MODES = {
    "tiny": Mode("tiny", 1, 1, ("tcp_stream",), 50, (), 0, 0, (), 0),
    "quick": Mode("quick", 2, 1, ("tcp_stream", "udp_rate", "tcp_rr"), 300, (2, 50), 1, 10, (50,), 50_000),
    "full": Mode("full", 5, 3, ("tcp_stream", "udp_rate", "tcp_rr"), 2000, (2, 50, 250), 3, 30, (50, 250),
                 500_000),
}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=os.path.dirname(__file__)).stdout.strip()}


class Progress:
    def __init__(self, total: int, out=sys.stderr) -> None:
        self.total, self.done, self.start, self.out = total, 0, time.monotonic(), out

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done:>3}/{self.total}] {elapsed:5.0f}s (~{eta:.0f}s left) {what}", file=self.out, flush=True)


def measure_one(topo: T.Topology, metric: str, path: str, mode: Mode) -> dict:
    e = topo.path(path)
    before = topo.counters()
    if metric == "conn_rate":
        sample = metrics.conn_rate(e, mode.connections)
    else:
        sample = metrics.METRICS[metric](e, mode.seconds)
    return {"topology": topo.name, "metric": metric, "path": path, "value": sample.value,
            "datapath_packets": topo.counters() - before, **sample.extra}


def run(mode_name: str = "quick", out_dir: str | None = None, topologies: list[str] | None = None) -> dict:
    mode = MODES[mode_name]
    names = topologies or TOPOLOGIES
    plan = [(r, m, p) for r in range(mode.rounds) for m in mode.metrics for p in T.PATHS]
    plan += [(r, "conn_rate", "internet") for r in range(mode.rounds)]
    scale_steps = len(mode.scale) * mode.scale_rounds * 2 * (len(names) - 1)
    progress = Progress(len(plan) * len(names) + scale_steps + 4)
    results: dict = {"mode": mode.name, "machine": machine(), "started": datetime.datetime.now().isoformat(),
                     "samples": [], "scale": [], "programs": [], "cni": {}}
    topos = T.build(names)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run still tears down
    try:
        for topo in topos:
            topo.up()
            progress.step(f"built {topo.name}")
        if isinstance(topos[0], T.Direct):
            results["direct_interfaces"] = topos[0].interfaces()
        for rnd, metric, path in plan:
            for topo in topos:  # interleaved: every topology once per (round, metric, path)
                row = measure_one(topo, metric, path, mode)
                results["samples"].append({"round": rnd, **row})
                progress.step(f"{topo.name:<10} {path:<8} {metric:<10} {row['value']}")
        for pods in mode.scale:
            for topo in topos[1:] if isinstance(topos[0], T.Direct) else topos:
                topo.add_idle_pods(pods)
            for rnd in range(mode.scale_rounds):
                for metric in ("tcp_rr", "udp_rate"):
                    for topo in (t for t in topos if not isinstance(t, T.Direct)):
                        row = measure_one(topo, metric, "vnet", mode)
                        results["scale"].append({"pods": pods, "round": rnd, **row})
                        progress.step(f"{topo.name:<10} {pods} pods {metric} {row['value']}")
        if mode.prog_repeat:
            results["programs"] = progcost.measure([1, 50, 250], mode.prog_repeat)
            progress.step("per-program cost")
        if mode.cni_calls:
            results["cni"] = control_plane(mode)
            progress.step("CNI latency")
    finally:
        for topo in topos:
            topo.down()
    results["finished"] = datetime.datetime.now().isoformat()
    if out_dir:
        report.write(results, out_dir)
    return results


def control_plane(mode: Mode) -> dict:
    """ADD/DEL latency and parallel ADDs on a node of their own (all 250 addresses free)."""
    ours, ref = T.Vnetdp("tc"), cni_latency.Reference()
    ours.lab.up()
    ref.up()
    try:
        plugins = {"vnetdp": cni_latency.Ours(ours), "reference bridge+host-local": ref}
        out = {name: {"sequential": cni_latency.latency(p, mode.cni_calls), "parallel": []}
               for name, p in plugins.items()}
        for n in mode.parallel:
            for name, p in plugins.items():
                out[name]["parallel"].append(cni_latency.parallel_adds(p, n))
        return out
    finally:
        ref.down()
        ours.down()
