"""Results as files: every sample and the machine (JSON), the tables (Markdown)
and charts (PNG, ``bench.charts``).

Every ratio is stated against ``limit``; vnetdp is also compared with both
bridge variants. A ratio or difference marked (+) or (-) is better or worse
beyond the spread of rounds; unmarked ones are within it."""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from collections.abc import Callable

from bench import charts
from bench.cni_latency import PHASES
from bench.metrics import METRICS
from bench.stats import BASE, Spread, added_cost, ratio, summary, verdict
from bench.topologies import PATHS, VETH

MARK = {"better": " (+)", "worse": " (-)", None: ""}


def _num(v: float) -> str:
    return f"{v:.3g}"


def _ns(v: float) -> str:
    return f"{v:.0f}"


def _share(v: float) -> str:
    return f"{v:.2%}"


EXTRAS: dict[str, tuple[str, Callable[[float], str]]] = {
    "p99": ("p99 {}", _num), "loss": ("loss {}", _share), "sender_cpu_ns": ("{} ns CPU/pkt", _ns),
    "client_cpu_ns": ("{} ns CPU/conn", _ns), "failures": ("{} failed", _ns)}


def _spread(s: Spread, num: Callable[[float], str] = _num) -> str:
    return f"{num(s.median)} ({num(s.lo)}-{num(s.hi)})"


def _cell(fields: dict | None) -> str:
    if not fields or not fields["value"]:
        return "-"
    parts = [_spread(fields["value"])]
    for name, (label, num) in EXTRAS.items():
        s = fields.get(name)
        if s and not (name == "failures" and s.hi == 0):
            parts.append(label.format(_spread(s, num)))
    return ", ".join(parts)


def _ratio_cell(a: Spread | None, b: Spread | None, higher_is_better: bool) -> str:
    r = ratio(a, b)
    return "-" if r is None else f"{r:.2f}{MARK[verdict(a, b, higher_is_better)]}"


def _rows(table: dict, paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, metric) keys of ``table`` on ``paths``, in path then metric order."""
    return [(p, m) for p in paths for m in METRICS if (m, p) in table]


def _lab_topologies(results: dict) -> list[str]:
    return [t for t in results["topologies"] if t != "direct"]


def _comparisons(topos: list[str]) -> list[tuple[str, str]]:
    """Each topology against the limit, and vnetdp against each bridge variant."""
    return [(t, BASE) for t in topos if t != BASE] + [
        (v, b) for v in topos if v.startswith("vnetdp") for b in topos if b.startswith("bridge")]


def _legend(results: dict) -> list[str]:
    lines = [f"Ratios are to `{BASE}`: the same client and servers through the same fabric router and "
             "nftables, no host datapath (the lab's own limit). Cells: median (min-max) over "
             f"{results['rounds']} interleaved rounds. (+)/(-): better/worse than the reference beyond "
             "the spread (the min-max ranges do not overlap); unmarked: within the spread."]
    for name, how in results["topologies"].items():
        if "bridge_nf_call_iptables" in how:
            lines.append(f"`{name}`: bridge-nf-call-iptables={how['bridge_nf_call_iptables']} in its VM namespace.")
    for name, why in results.get("unavailable", {}).items():
        lines.append(f"`{name}` was not measured: {why}.")
    return [" ".join(lines), ""]


def _medians(results: dict, table: dict) -> list[str]:
    topos = _lab_topologies(results)
    lines = ["| path | metric | " + " | ".join(topos) + " |", "|---|---|" + "---|" * len(topos)]
    for path, metric in _rows(table, PATHS):
        lines.append(f"| {path} | {metric} ({METRICS[metric].unit}) | " +
                     " | ".join(_cell(table[(metric, path)].get(t)) for t in topos) + " |")
    return lines


def _ratios(results: dict, table: dict) -> list[str]:
    pairs = _comparisons(_lab_topologies(results))
    lines = ["| path | metric | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |", "|---|---|" + "---|" * len(pairs)]
    for path, metric in _rows(table, PATHS):
        row = table[(metric, path)]
        lines.append(f"| {path} | {metric} | " + " | ".join(
            _ratio_cell((row.get(a) or {}).get("value"), (row.get(b) or {}).get("value"),
                        METRICS[metric].higher_is_better) for a, b in pairs) + " |")
    return lines


def _added(results: dict) -> list[str]:
    cost = added_cost(results)
    if not cost:
        return []
    topos = [t for t in _lab_topologies(results) if t != BASE]
    pairs = [(a, b) for a, b in _comparisons(topos) if b != BASE]
    lines = ["", f"Added cost over `{BASE}` (the datapath's): CPU ns per packet (flood, sender), per new "
             f"UDP flow (new_flows_udp, sender) or per new connection (new_flows, client) above `{BASE}`'s in the same round; median (min-max).", "",
             "| path | metric | " + " | ".join(topos + [f"{a}/{b}" for a, b in pairs]) + " |",
             "|---|---|" + "---|" * (len(topos) + len(pairs))]
    for path, metric in _rows(cost, PATHS):
        row = cost[(metric, path)]
        lines.append(f"| {path} | {metric} | " + " | ".join(
            [_spread(row[t], _ns) if row.get(t) else "-" for t in topos] +
            [_ratio_cell(row.get(a), row.get(b), False) for a, b in pairs]) + " |")
    return lines


def _footnote(table: dict) -> list[str]:
    cells = [f"{metric} ({METRICS[metric].unit}) {_cell(table[(metric, path)].get('direct'))}"
             for path, metric in _rows(table, (VETH,))]
    if not cells:
        return []
    return ["", "Footnote, bare veth (`direct`: two namespaces on one veth, no router, no nftables; not a limit "
            "any topology here can reach): " + "; ".join(cells) + "."]


def _scale(results: dict) -> dict:
    """(topology, metric) -> pods -> median."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for s in results["scale"]:
        if s["value"] is not None:
            groups[(s["topology"], s["metric"])][s["pods"]].append(s["value"] * METRICS[s["metric"]].scale)
    return {k: {p: statistics.median(v) for p, v in by.items()} for k, by in groups.items()}


def _scale_lines(results: dict) -> list[str]:
    if not results["scale"]:
        return []
    pods = sorted({s["pods"] for s in results["scale"]})
    lines = ["", "Scale (vnet path, medians): pods present on the node", "",
             "| topology | metric | " + " | ".join(f"{p} pods" for p in pods) + " |", "|---|---|" + "---|" * len(pods)]
    for (topo, metric), by_pods in sorted(_scale(results).items()):
        lines.append(f"| {topo} | {metric} ({METRICS[metric].unit}) | " +
                     " | ".join(_num(by_pods[p]) if p in by_pods else "-" for p in pods) + " |")
    return lines


def _profile_lines(results: dict) -> list[str]:
    if not results.get("profile"):
        return []
    lines = ["", "Profile: where the sender's CPU goes in a flood (perf, kernel symbols, share of samples)", ""]
    for topo, prof in results["profile"].items():
        lines.append(f"- {topo} ({prof['path']}): " + ", ".join(
            f"{s['symbol']} {s['percent']:.1f}%" for s in prof["symbols"]))
    return lines


def _case_table(title: str, rows: list[dict], key: str, label: Callable[[int], str]) -> list[str]:
    """Rows of cases by a count (``key``): ns per packet, or ms where a row has that."""
    counts = sorted({r[key] for r in rows})
    lines = ["", title, "", "| case | " + " | ".join(map(label, counts)) + " |", "|---|" + "---|" * len(counts)]
    by_case: dict = defaultdict(dict)
    for r in rows:
        by_case[r["case"]][r[key]] = r.get("ns_per_packet", r.get("ms"))
    for case, row in by_case.items():
        lines.append(f"| {case} | " + " | ".join(str(row.get(c, "-")) for c in counts) + " |")
    return lines


def _program_lines(results: dict) -> list[str]:
    if not results["programs"]:
        return []
    return _case_table("Per-program cost (BPF_PROG_TEST_RUN, ns/packet) by endpoints in the map",
                       results["programs"], "endpoints", lambda c: f"{c} endpoints")


def _policy_lines(results: dict) -> list[str]:
    """Node policy's cost by rule count (0: no rule set)."""
    if not results.get("policy"):
        return []
    return _case_table("Node policy (BPF_PROG_TEST_RUN ns/packet; control plane ms) by rules in the pod's rule set",
                       results["policy"], "rules", lambda c: f"{c} rules" if c else "no rule set")


def _percentile(sorted_s: list[float], p: int) -> float:
    return sorted_s[min(len(sorted_s) - 1, round(p / 100 * (len(sorted_s) - 1)))]


def _percentile_ms(sorted_s: list[float], p: int, digits: int = 0) -> str:
    return f"{_percentile(sorted_s, p) * 1000:.{digits}f}" if sorted_s else "-"


def _cni_lines(results: dict) -> list[str]:
    if not results["cni"]:
        return []
    again = f"; measured again at {results['cni_measured'][:16]}" if "cni_measured" in results else ""
    lines = ["", f"CNI control plane (ms; runtime-style calls, each a new process{again})", "",
             "| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 | parallel ADDs wall |", "|---|---|---|---|---|---|"]
    for name, r in results["cni"].items():
        adds, dels = sorted(r["sequential"]["add_s"]), sorted(r["sequential"]["del_s"])
        par = ", ".join(f"{p['n']}: {p['wall_s']:.1f} s ({p['succeeded']} ok)" for p in r["parallel"])
        lines.append(f"| {name} | {_percentile_ms(adds, 50)} | {_percentile_ms(adds, 99)} | "
                     f"{_percentile_ms(dels, 50)} | {_percentile_ms(dels, 99)} | {par} |")
    return lines + _phase_lines(results)


def _phase_lines(results: dict) -> list[str]:
    """vnetdp's ADD by phase (as its call log times them), p50 and p99 in ms."""
    phases = results["cni"].get("vnetdp", {}).get("sequential", {}).get("phases", {}).get("ADD")
    if not phases:
        return []
    lines = ["", "vnetdp ADD by phase (ms, inside the plugin)", "", "| phase | p50 | p99 |", "|---|---|---|"]
    for name in PHASES:
        if name in phases:
            took = sorted(phases[name])
            lines.append(f"| {name} | {_percentile_ms(took, 50, 1)} | {_percentile_ms(took, 99, 1)} |")
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    table = summary(results)
    lines = [f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, kernel {m['kernel']}; "
             f"mode {results['mode']}, commit {m['commit']}, {results['started'][:16]}.", ""]
    lines += _legend(results) + _medians(results, table)
    lines += ["", f"Ratios (to `{BASE}`, and vnetdp to each bridge)", ""] + _ratios(results, table)
    lines += _added(results) + _footnote(table) + _scale_lines(results) + _profile_lines(results)
    lines += _program_lines(results) + _policy_lines(results) + _cni_lines(results)
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(results))
    return paths + charts.write(results, summary(results), _scale(results), out_dir)
