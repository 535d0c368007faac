"""``vnetdp-lab bench``: build every topology, measure interleaved (A B C D, A B C
D, ...) over rounds, write JSON, Markdown and charts.

Modes: ``tiny`` (the test suite's: one round of every metric on every
topology, the C tools running 0.3 s, iperf3 and sockperf on the vnet path
only; proves each datapath carried the traffic), ``quick`` (a few minutes)
and ``full`` (the committed results). ``profile`` adds a perf profile of one flood per
topology."""
from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench import cni_latency, ctools, metrics, policy_cost, profiling, progcost, report
from bench import topologies as T

TOPOLOGIES = ["limit", "bridge-nf", "bridge", "vnetdp-tc", "vnetdp-xdp", "direct"]
SCALE_METRICS = ("tcp_rr_same", "flood")  # on the vnet path, with idle pods present


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    seconds: float              # per measurement (iperf3 and sockperf: whole seconds, at least one)
    scale: tuple[int, ...]      # pods present on the node
    scale_rounds: int
    cni_calls: int              # sequential ADD/DEL pairs per plugin
    parallel: tuple[int, ...]   # parallel ADD wall times
    prog_repeat: int
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # metric -> fewer paths than its own


MODES = {
    "tiny": Mode("tiny", rounds=1, seconds=0.3, scale=(), scale_rounds=0, cni_calls=0, parallel=(), prog_repeat=0,
                 paths={"tcp_stream": ("vnet", "veth"), "tcp_rr_same": ("vnet",), "tcp_rr_cross": ("vnet",)}),
    "quick": Mode("quick", rounds=2, seconds=1, scale=(2, 50), scale_rounds=1, cni_calls=10, parallel=(50,),
                  prog_repeat=50_000),
    "full": Mode("full", rounds=5, seconds=2, scale=(2, 50, 250), scale_rounds=3, cni_calls=30, parallel=(50, 250),
                 prog_repeat=500_000),
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
        eta = elapsed / self.done * max(self.total - self.done, 0)
        print(f"[{self.done:>3}/{self.total}] {elapsed:5.0f}s (~{eta:.0f}s left) {what}", file=self.out, flush=True)


def measure_one(topo: T.Topology, metric: str, path: str, seconds: float) -> dict:
    before = topo.counters()
    sample = metrics.measure(metric, topo.path(path), seconds)
    return {"topology": topo.name, "metric": metric, "path": path, "value": sample.value,
            "datapath_packets": topo.counters() - before, **sample.extra}


def plan(mode: Mode, topos: list[T.Topology]) -> list[tuple[int, str, str, T.Topology]]:
    """(round, metric, path, topology), interleaved: every topology once per (round, metric, path)."""
    return [(rnd, metric, path, topo) for rnd in range(mode.rounds) for metric, m in metrics.METRICS.items()
            for path in mode.paths.get(metric, m.paths) for topo in topos if path in topo.paths]


def run(mode_name: str = "quick", out_dir: str | None = None, topologies: list[str] | None = None,
        profile: bool = False) -> dict:
    mode = MODES[mode_name]
    ctools.build()  # a compile error ends the run before any lab is up
    topos = T.build(topologies or TOPOLOGIES)
    progress = Progress(len(topos))
    results: dict = {"mode": mode.name, "rounds": mode.rounds, "machine": machine(),
                     "started": datetime.datetime.now().isoformat(), "topologies": {}, "unavailable": {},
                     "samples": [], "scale": [], "profile": {}, "programs": [], "policy": [], "cni": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run still tears down
    try:
        built = []
        for topo in topos:
            try:
                topo.up()
            except T.Unavailable as why:
                results["unavailable"][topo.name] = str(why)
                progress.step(f"{topo.name} not built: {why}")
                continue
            built.append(topo)
            results["topologies"][topo.name] = topo.describe()
            progress.step(f"built {topo.name}")
        steps = plan(mode, built)
        scaled = [t for t in built if t.hosts_pods]
        progress.total += len(steps) + len(mode.scale) * mode.scale_rounds * len(SCALE_METRICS) * len(scaled) + \
            (len(built) if profile else 0) + bool(mode.prog_repeat) + bool(mode.cni_calls)
        for rnd, metric, path, topo in steps:
            row = measure_one(topo, metric, path, mode.seconds)
            results["samples"].append({"round": rnd, **row})
            progress.step(f"{topo.name:<10} {path:<8} {metric:<12} {row['value']}")
        for pods in mode.scale:
            for topo in scaled:
                topo.add_idle_pods(pods)
            for rnd in range(mode.scale_rounds):
                for metric in SCALE_METRICS:
                    for topo in scaled:
                        row = measure_one(topo, metric, "vnet", mode.seconds)
                        results["scale"].append({"pods": pods, "round": rnd, **row})
                        progress.step(f"{topo.name:<10} {pods} pods {metric} {row['value']}")
        if profile:
            for topo in built:
                path = topo.paths[0]
                results["profile"][topo.name] = {"path": path,
                                                 **profiling.kernel_symbols(topo.path(path), mode.seconds)}
                progress.step(f"{topo.name:<10} profiled")
        if mode.prog_repeat:
            results["programs"] = progcost.measure([1, 50, 250], mode.prog_repeat)
            results["policy"] = policy_cost.measure([1, 100, 1000], mode.prog_repeat)
            progress.step("per-program cost, without and with node policy")
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
