"""Human tables of what ``inspect`` and ``stats`` gather (``--json`` prints
the gathered dicts themselves)."""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [_numeric([row[i] for row in rows if row[i] is not None]) for i in range(len(headers))]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _numeric(values: list) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _pod(row: dict) -> str:
    if row.get("pod"):
        return f"{row['namespace']}/{row['pod']}" if row.get("namespace") else row["pod"]
    return ""


def _short(container_id: str) -> str:
    return container_id[:12] if len(container_id) == 64 else container_id


def _error(section: Any) -> str | None:
    return section["error"] if isinstance(section, dict) and "error" in section else None


def status(s: dict[str, Any]) -> str:
    """``vnetdp status``: the verdict first, then each part of the node."""
    out = [f"node:      {s['verdict']}"]
    out += [f"  problem: {p}" for p in s["problems"]]
    out += [f"  warning: {w}" for w in s["warnings"]]
    out.append(f"state dir: {s['state_dir']}")
    out.append(f"bpffs dir: {s['bpffs_dir']}")
    progs = s["programs"]
    if _error(progs):
        out.append(f"programs:  error: {_error(progs)}")
    else:
        build = progs["build"] or "none pinned"
        note = "" if progs["build"] == progs["this_code"] else f" (this code's build: {progs['this_code']})"
        out.append(f"programs:  build {build}{note}")
    agent = s["agent"]
    out.append(f"agent:     {'alive' if agent['alive'] else 'down'} ({agent['socket']})")
    out.append("")
    out.append("attachments:")
    nic = s["nic"]
    rows = []
    if _error(nic):
        rows.append(["NIC", "-", "error", _error(nic), "-"])
    elif nic["ifindex"] is None:
        rows.append(["NIC", "-", "not configured yet", "-", "-"])
    else:
        for a in nic["attachments"] or [{"hook": "-", "mechanism": "nothing attached", "prog_id": None,
                                         "program": None}]:
            rows.append([f"NIC {nic['name'] or nic['ifindex']}", a["hook"], a["mechanism"], a["prog_id"],
                         a["program"] or ""])
    pods = s["pods"]
    if _error(pods):
        rows.append(["pods", "-", "error", _error(pods), "-"])
    else:
        rows.append(["pods", "ingress+egress", f"{pods['attached']} of {pods['host_veths']} host veths", "",
                     f"{pods['endpoints']} endpoints"])
    out.append(_indent(table(["WHERE", "HOOK", "MECHANISM", "PROG ID", "PROGRAM"], rows)))
    out.append("")
    out.append("pools:")
    pools = s["pools"]
    if _error(pools):
        out.append(f"  error: {_error(pools)}")
    elif not pools:
        out.append("  none yet (read from the interface document on the next ADD)")
    else:
        out.append(_indent(table(["SUBNET", "SIZE", "USED", "FREE"],
                                 [[p["subnet"], p["size"], p["used"], p["free"]] for p in pools])))
    snat = s["snat"]
    out.append("")
    if _error(snat):
        out.append(f"SNAT table: error: {_error(snat)}")
    else:
        out.append(f"SNAT table: {snat['entries']} of {snat['capacity']} entries ({snat['fill']:.1%})")
    out.append("")
    out.append("settings:")
    settings = s["settings"]
    if _error(settings):
        out.append(f"  error: {_error(settings)}")
    else:
        out.append(_indent(table(["SETTING", "VALUE"], [[k, json.dumps(v)] for k, v in settings.items()])))
    return "\n".join(out)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def endpoints(rows: list[dict[str, Any]]) -> str:
    """``vnetdp endpoints``: one line per pod."""
    return table(["CONTAINER", "POD", "OWNER", "ADDRESS", "POD MAC", "HOST VETH", "PACKETS", "BYTES", "DROPS"],
                 [[_short(r["container_id"]), _pod(r), r["owner"], r["address"], r["pod_mac"],
                   r["host_veth"] if r["in_datapath"] else f"{r['host_veth']} (not in datapath)",
                   r["packets"], r["bytes"], r["drops"]] for r in rows])


def stats(s: dict[str, Any]) -> str:
    """``vnetdp stats``: one line per endpoint, direction and reason (with rates when watching)."""
    rated = "interval_s" in s
    headers = ["INTERFACE", "POD", "DIRECTION", "REASON", "PACKETS", "BYTES"]
    if rated:
        headers += ["PKTS/S", "BYTES/S"]
    rows = []
    for e in s["endpoints"]:
        who = _pod(e) or _short(e["container_id"]) or e["kind"]
        for c in e["counters"]:
            row = [e["interface"], who, c["direction"], c["reason"], c["packets"], c["bytes"]]
            if rated:
                row += [float(c["packets_per_s"]), float(c["bytes_per_s"])]
            rows.append(row)
    when = datetime.datetime.fromtimestamp(s["time"]).strftime("%Y-%m-%d %H:%M:%S")
    head = f"{when}" + (f" (rates over {s['interval_s']:.1f} s)" if rated else "")
    return head + "\n" + (table(headers, rows) if rows else "no counters yet (no packet has met the datapath)")
