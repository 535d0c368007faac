"""Prometheus metrics of one node (``vnetdp metrics``).

A custom collector reads the node on every scrape: the datapath's counters
(per reason, direction and endpoint), the endpoints, the IPAM pools, the
SNAT table's fill and its exhaustion drops. CNI call latencies and errors
come from the call spool (``vnetdp.cni.logs``): each plugin call appends
its record, and the collector folds the records appended since the last
scrape into cumulative histograms, so they are right whichever process
serves them. A fresh ``vnetdp metrics`` process starts from what the spool
still holds (a restart, for Prometheus).

Metrics::

    vnetdp_datapath_packets_total{interface,namespace,pod,direction,reason}  counter
    vnetdp_datapath_bytes_total{interface,namespace,pod,direction,reason}    counter
    vnetdp_snat_drops_total{reason}        the DROP_SNAT_* reasons, every endpoint
    vnetdp_endpoints                       pods in the datapath
    vnetdp_ipam_pool_size{subnet}          addresses in the pool
    vnetdp_ipam_pool_used{subnet}
    vnetdp_ipam_pool_free{subnet}
    vnetdp_snat_entries                    SNAT table entries (two per flow)
    vnetdp_snat_capacity                   its max_entries
    vnetdp_cni_call_duration_seconds{plugin,command,phase}  histogram; phase "total" is the whole call
    vnetdp_cni_errors_total{plugin,command,code}
    vnetdp_metrics_source_up{source}       1 when the datapath / ipam / snat / spool could be read
"""
from __future__ import annotations

import ipaddress
import math
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from vnetdp.cni.logs import CallSpool, SpoolReader
from vnetdp.ops import inspect

#: Seconds. An ADD through the agent takes tens of milliseconds; one that
#: compiles the datapath, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
POD_LABELS = ("interface", "namespace", "pod", "direction", "reason")


# --- CNI calls ------------------------------------------------------------------------------
@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: above every bucket
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        i = next((i for i, le in enumerate(BUCKETS) if seconds <= le), len(BUCKETS))
        self.counts[i] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, n in zip([*BUCKETS, math.inf], self.counts):
            running += n
            out.append(("+Inf" if le == math.inf else repr(float(le)), running))
        return out


class CallStats:
    """Cumulative latency histograms per (plugin, command, phase) and error
    counts per (plugin, command, code), from call records."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str, str], _Histogram] = {}
        self.errors: dict[tuple[str, str, str], int] = {}

    def add(self, record: dict[str, Any]) -> None:
        try:
            plugin, command = str(record["plugin"]), str(record["command"])
            phases = {str(k): float(v) for k, v in record["phases"].items()}
            code = int(record.get("code") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # not a call record
        for name, seconds in phases.items():
            self.durations.setdefault((plugin, command, name), _Histogram()).observe(seconds)
        if record.get("result") == "error" or code:
            key = (plugin, command, str(code))
            self.errors[key] = self.errors.get(key, 0) + 1

    def add_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.add(record)

    def families(self) -> Iterator:
        hist = HistogramMetricFamily("vnetdp_cni_call_duration_seconds",
                                     "CNI call latency per phase (total: the whole call)",
                                     labels=["plugin", "command", "phase"])
        for labels, h in sorted(self.durations.items()):
            hist.add_metric(list(labels), h.buckets(), h.total)
        yield hist
        errors = CounterMetricFamily("vnetdp_cni_errors", "CNI calls that failed, per CNI error code",
                                     labels=["plugin", "command", "code"])
        for labels, n in sorted(self.errors.items()):
            errors.add_metric(list(labels), n)
        yield errors


# --- the node -------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What one scrape read of the node; None where a source failed (``errors`` says why)."""

    counters: list[dict[str, Any]] | None = None   # POD_LABELS + packets, bytes
    endpoints: int | None = None
    pools: list[dict[str, Any]] | None = None
    snat: dict[str, Any] | None = None
    policy_drops: list[dict[str, Any]] | None = None  # vnetdp.policy.report's drops, by rule
    errors: dict[str, str] = field(default_factory=dict)


class Source(Protocol):
    def snapshot(self) -> Snapshot: ...

    def new_calls(self) -> list[dict[str, Any]]: ...


class NodeSource:
    """The node at ``dirs``: its maps, stores and call spool."""

    def __init__(self, dirs: inspect.NodeDirs) -> None:
        self.dirs = dirs
        self.spool = SpoolReader(CallSpool(dirs.state_dir))

    def new_calls(self) -> list[dict[str, Any]]:
        return self.spool.read()

    def snapshot(self) -> Snapshot:
        from vnetdp.ops import stats

        snap = Snapshot()
        try:
            sample = stats.sample(self.dirs)
            snap.counters = [{"interface": e["interface"], "namespace": e["namespace"], "pod": e["pod"],
                              "direction": c["direction"], "reason": c["reason"], "packets": c["packets"],
                              "bytes": c["bytes"]} for e in sample["endpoints"] for c in e["counters"]]
            with inspect.open_maps(self.dirs) as m:
                snap.endpoints = len(m.endpoints())
        except Exception as e:
            snap.errors["datapath"] = str(e)
        try:
            snap.pools = inspect.pools(self.dirs)
        except Exception as e:
            snap.errors["ipam"] = str(e)
        try:
            snap.snat = inspect.snat(self.dirs)
        except Exception as e:
            snap.errors["snat"] = str(e)
        try:
            from vnetdp.policy import report
            snap.policy_drops = report.show(self.dirs.state_dir, self.dirs.bpffs.maps_dir)["drops"]
        except Exception as e:
            snap.errors["policy"] = str(e)
        return snap


def snat_drop_reasons() -> list[str]:
    from vnetdp.datapath.reasons import reasons

    return sorted(r.name for r in reasons().values() if r.name.startswith("DROP_SNAT_"))


def node_families(snap: Snapshot, snat_drops: list[str]) -> Iterator:
    """The families of one snapshot (a failed source's are left out)."""
    up = GaugeMetricFamily("vnetdp_metrics_source_up", "1 when this scrape could read the source",
                           labels=["source"])
    for source in ("datapath", "ipam", "snat", "policy", "spool"):
        up.add_metric([source], 0 if source in snap.errors else 1)
    yield up
    if snap.counters is not None:
        packets = CounterMetricFamily("vnetdp_datapath_packets", "packets per verdict reason, direction and "
                                      "endpoint", labels=list(POD_LABELS))
        octets = CounterMetricFamily("vnetdp_datapath_bytes", "bytes per verdict reason, direction and endpoint",
                                     labels=list(POD_LABELS))
        drops = dict.fromkeys(snat_drops, 0)
        for c in snap.counters:
            labels = [str(c[k]) for k in POD_LABELS]
            packets.add_metric(labels, c["packets"])
            octets.add_metric(labels, c["bytes"])
            if c["reason"] in drops:
                drops[c["reason"]] += c["packets"]
        yield packets
        yield octets
        snat = CounterMetricFamily("vnetdp_snat_drops", "new flows dropped by SNAT (table full, no port, "
                                   "per-pod quota, untranslatable)", labels=["reason"])
        for reason, n in sorted(drops.items()):
            snat.add_metric([reason], n)
        yield snat
    if snap.endpoints is not None:
        yield GaugeMetricFamily("vnetdp_endpoints", "pods in the datapath's endpoint map", value=snap.endpoints)
    if snap.pools is not None:
        for name, key, doc in (("size", "size", "addresses in the IPAM pool"),
                               ("used", "used", "addresses of the pool held by pods"),
                               ("free", "free", "addresses of the pool free to hand out")):
            g = GaugeMetricFamily(f"vnetdp_ipam_pool_{name}", doc, labels=["subnet"])
            for p in snap.pools:
                g.add_metric([p["subnet"]], p[key])
            yield g
    if snap.snat is not None:
        yield GaugeMetricFamily("vnetdp_snat_entries", "SNAT table entries (two per flow)",
                                value=snap.snat["entries"])
        yield GaugeMetricFamily("vnetdp_snat_capacity", "SNAT table capacity (entries)",
                                value=snap.snat["capacity"])
    if snap.policy_drops is not None:
        denied = CounterMetricFamily("vnetdp_policy_drops", "packets node policy denied, per endpoint and rule",
                                     labels=["address", "pod", "rule_set", "rule", "direction"])
        for d in snap.policy_drops:
            denied.add_metric([d["address"], d["pod"], d["ruleSet"], d["rule"], d["direction"]], d["packets"])
        yield denied


class NodeCollector(Collector):
    """Reads the node on every scrape; folds new call records into its histograms."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.calls = CallStats()
        self.lock = threading.Lock()
        self._snat_drops: list[str] | None = None

    def describe(self) -> list:
        return []  # no read at registration: the families come with each scrape

    def collect(self) -> Iterator:
        with self.lock:
            try:
                calls, spool_error = self.source.new_calls(), None
            except Exception as e:
                calls, spool_error = [], str(e)
            self.calls.add_all(calls)
            snap = self.source.snapshot()
            if spool_error:
                snap.errors["spool"] = spool_error
            if self._snat_drops is None:
                self._snat_drops = snat_drop_reasons()
            families = [*node_families(snap, self._snat_drops), *self.calls.families()]
        yield from families


def registry(collector: Collector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


# --- serving --------------------------------------------------------------------------------
class RemoteRefused(ValueError):
    """A listen address other than loopback without --allow-remote."""


def parse_listen(addr: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(addr: str, allow_remote: bool) -> tuple[str, int]:
    host, port = parse_listen(addr)
    if not allow_remote and not is_loopback(host):
        raise RemoteRefused(f"--listen {addr}: not a loopback address; metrics show the node's pods and "
                            "addresses: pass --allow-remote to serve them beyond this node")
    return host, port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per scrape would flood the journal
        pass


def http_server(collector: Collector, host: str, port: int) -> WSGIServer:
    """A server of /metrics (any path) bound to host:port (port 0: any free one)."""
    from prometheus_client import make_wsgi_app

    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (WSGIServer,), {"address_family": family, "allow_reuse_address": True})
    return make_server(host, port, make_wsgi_app(registry(collector)), server_class=server_class,
                       handler_class=_QuietHandler)


def serve(collector: Collector, host: str, port: int) -> None:
    """Serve /metrics at host:port until interrupted."""
    httpd = http_server(collector, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"vnetdp metrics: serving http://{shown}:{httpd.server_port}/metrics", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def exposition(collector: Collector) -> str:
    """The text a scrape would get (``--once``)."""
    from prometheus_client import generate_latest

    return generate_latest(registry(collector)).decode()
