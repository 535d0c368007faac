"""Results as files: every sample and the machine (JSON), medians with
min-max and ratios (Markdown), and charts (PNG, matplotlib)."""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict

UNITS = {"tcp_stream": "Gbit/s", "udp_rate": "Mpackets/s", "tcp_rr": "µs p50", "conn_rate": "conn/s"}
SCALE = {"udp_rate": 1e-6}  # shown in Mpackets/s
HIGHER_IS_BETTER = {"tcp_stream": True, "udp_rate": True, "tcp_rr": False, "conn_rate": True}


def _values(samples: list[dict], key: str = "value") -> list[float]:
    return [s[key] for s in samples if s.get(key) is not None]


def summary(results: dict) -> dict:
    """(metric, path) -> topology -> {median, min, max, p99?, n}."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for s in results["samples"]:
        groups[(s["metric"], s["path"])][s["topology"]].append(s)
    out: dict = {}
    for key, by_topo in groups.items():
        out[key] = {}
        for topo, samples in by_topo.items():
            vals = [v * SCALE.get(key[0], 1) for v in _values(samples)]
            if not vals:
                out[key][topo] = None
                continue
            row = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
            if key[0] == "tcp_rr":
                row["p99"] = statistics.median(_values(samples, "p99"))
            if key[0] == "udp_rate":
                row["cpu_ns"] = statistics.median(_values(samples, "kernel_cpu_ns_per_packet"))
            out[key][topo] = row
    return out


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['median'] / b['median']:.2f}" if a and b and b["median"] else "-"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, kernel {m['kernel']}; "
             f"mode {results['mode']}, commit {m['commit']}, {results['started'][:16]}.", "",
             "| path | metric | direct | bridge | vnetdp-tc | vnetdp-xdp | tc/bridge | tc/direct | xdp/bridge |",
             "|---|---|---|---|---|---|---|---|---|"]
    table = summary(results)
    for (metric, path), by_topo in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        def cell(t: str) -> str:
            r = by_topo.get(t)
            if not r:
                return "-"
            text = f"{r['median']:.3g} ({r['min']:.3g}-{r['max']:.3g})"
            if "p99" in r:
                text += f", p99 {r['p99']:.3g}"
            if "cpu_ns" in r:
                text += f", {r['cpu_ns']:.0f} ns CPU/pkt"
            return text
        lines.append(f"| {path} | {metric} ({UNITS[metric]}) | " + " | ".join(
            cell(t) for t in ("direct", "bridge", "vnetdp-tc", "vnetdp-xdp")) + " | " + " | ".join(
            (_ratio(by_topo.get(a), by_topo.get(b)) for a, b in
             (("vnetdp-tc", "bridge"), ("vnetdp-tc", "direct"), ("vnetdp-xdp", "bridge")))) + " |")
    if results["scale"]:
        lines += ["", "Scale (vnet path, medians): pods present on the node", "",
                  "| topology | metric | " + " | ".join(f"{p} pods" for p in _pods(results)) + " |",
                  "|---|---|" + "---|" * len(_pods(results))]
        for (topo, metric), by_pods in sorted(_scale(results).items()):
            lines.append(f"| {topo} | {metric} ({UNITS[metric]}) | " +
                         " | ".join(f"{by_pods[p]:.3g}" if p in by_pods else "-" for p in _pods(results)) + " |")
    if results["programs"]:
        counts = sorted({r["endpoints"] for r in results["programs"]})
        lines += ["", "Per-program cost (BPF_PROG_TEST_RUN, ns/packet) by endpoints in the map", "",
                  "| case | " + " | ".join(f"{c} endpoints" for c in counts) + " |", "|---|" + "---|" * len(counts)]
        by_case: dict = defaultdict(dict)
        for r in results["programs"]:
            by_case[r["case"]][r["endpoints"]] = r["ns_per_packet"]
        for case, row in by_case.items():
            lines.append(f"| {case} | " + " | ".join(str(row[c]) for c in counts) + " |")
    if results["cni"]:
        lines += ["", "CNI control plane (ms; runtime-style calls, each a new process)", "",
                  "| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 | parallel ADDs wall |", "|---|---|---|---|---|---|"]
        for name, r in results["cni"].items():
            adds, dels = sorted(r["sequential"]["add_s"]), sorted(r["sequential"]["del_s"])
            par = ", ".join(f"{p['n']}: {p['wall_s']:.1f} s ({p['succeeded']} ok)" for p in r["parallel"])
            lines.append(f"| {name} | {_pct(adds, 50)} | {_pct(adds, 99)} | {_pct(dels, 50)} | {_pct(dels, 99)} | {par} |")
    return "\n".join(lines) + "\n"


def _pct(sorted_s: list[float], p: int) -> str:
    if not sorted_s:
        return "-"
    return f"{sorted_s[min(len(sorted_s) - 1, round(p / 100 * (len(sorted_s) - 1)))] * 1000:.0f}"


def _pods(results: dict) -> list[int]:
    return sorted({s["pods"] for s in results["scale"]})


def _scale(results: dict) -> dict:
    groups: dict = defaultdict(lambda: defaultdict(list))
    for s in results["scale"]:
        if s["value"] is not None:
            groups[(s["topology"], s["metric"])][s["pods"]].append(s["value"] * SCALE.get(s["metric"], 1))
    return {k: {p: statistics.median(v) for p, v in by.items()} for k, by in groups.items()}


def charts(results: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    table = summary(results)
    topos = ["direct", "bridge", "vnetdp-tc", "vnetdp-xdp"]
    for metric in ("tcp_stream", "udp_rate", "tcp_rr"):
        paths = [p for p in ("vnet", "local", "internet") if (metric, p) in table]
        if not paths:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.2
        for i, topo in enumerate(topos):
            rows = [table[(metric, p)].get(topo) for p in paths]
            meds = [r["median"] if r else 0 for r in rows]
            errs = [[r["median"] - r["min"] if r else 0 for r in rows], [r["max"] - r["median"] if r else 0 for r in rows]]
            ax.bar([x + i * width for x in range(len(paths))], meds, width, yerr=errs, label=topo, capsize=3)
        ax.set_xticks([x + 1.5 * width for x in range(len(paths))], paths)
        ax.set_ylabel(UNITS[metric])
        ax.set_title(f"{metric} (median, min-max)")
        ax.legend()
        path = os.path.join(out_dir, f"{metric}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if results["scale"]:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, metric in zip(axes, ("tcp_rr", "udp_rate")):
            for (topo, m), by_pods in sorted(_scale(results).items()):
                if m == metric:
                    ax.plot(sorted(by_pods), [by_pods[p] for p in sorted(by_pods)], marker="o", label=topo)
            ax.set_xlabel("pods on the node")
            ax.set_ylabel(UNITS[metric])
            ax.legend()
        path = os.path.join(out_dir, "scale.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write(results: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(results))
    return paths + charts(results, out_dir)
