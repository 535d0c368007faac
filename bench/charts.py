"""PNG charts of a run (matplotlib): per metric, each lab topology's median with
its min-max as error bars, per path; and the scale runs by pods present."""
from __future__ import annotations

import os

from bench.metrics import METRICS
from bench.topologies import PATHS


def write(results: dict, table: dict, scale: dict, out_dir: str) -> list[str]:
    """``table``: ``stats.summary``; ``scale``: (topology, metric) -> pods -> median."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> str:
        path = os.path.join(out_dir, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    written = []
    topos = [t for t in results["topologies"] if t != "direct"]
    for metric, m in METRICS.items():
        paths = [p for p in PATHS if (metric, p) in table]
        if not paths:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(topos)
        for i, topo in enumerate(topos):
            spreads = [(table[(metric, p)].get(topo) or {}).get("value") for p in paths]
            meds = [s.median if s else 0 for s in spreads]
            errs = [[s.median - s.lo if s else 0 for s in spreads], [s.hi - s.median if s else 0 for s in spreads]]
            ax.bar([x + i * width for x in range(len(paths))], meds, width, yerr=errs, label=topo, capsize=3)
        ax.set_xticks([x + (len(topos) - 1) * width / 2 for x in range(len(paths))], paths)
        ax.set_ylabel(m.unit)
        ax.set_title(f"{metric} (median, min-max)")
        ax.legend()
        written.append(save(fig, metric))
    metrics = sorted({metric for _, metric in scale})
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for (topo, m), by_pods in sorted(scale.items()):
                if m == metric:
                    ax.plot(sorted(by_pods), [by_pods[p] for p in sorted(by_pods)], marker="o", label=topo)
            ax.set_xlabel("pods on the node")
            ax.set_ylabel(f"{metric} ({METRICS[metric].unit})")
            ax.legend()
        written.append(save(fig, "scale"))
    return written
