"""One measurement each: a number (and unit) for a path of a topology.

Traffic tools run inside the lab namespaces: iperf3 (TCP stream, UDP small
packets), sockperf (TCP request/response latency), vnetdp.lab.connstorm (new
TCP connections per second). CPU cost per packet comes from /proc/stat:
system and softirq time of all CPUs during the UDP run, over the packets
received."""
from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

from bench.topologies import Endpoints
from vnetdp.lab import connstorm
from vnetdp.lab.probe import iperf_json, server, tcp_transfer, until_listening
from vnetdp.lab.shell import in_ns

SOCKPERF_PORT = 11111
UDP_PORT = 5202
CONN_PORT = 7100
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    value: float | None
    extra: dict


def tcp_stream(e: Endpoints, seconds: int) -> Sample:
    r = tcp_transfer(e.client_ns, e.server_ns, e.server_ip, seconds=seconds)
    return Sample(r.value if r.ok else None, {"unit": "Gbit/s"})


def _kernel_cpu_ticks() -> int:
    """System plus softirq time of all CPUs, in clock ticks."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[3]) + int(fields[7])  # system, softirq


def udp_rate(e: Endpoints, seconds: int, streams: int = 4, size: int = 64) -> Sample:
    """Small UDP packets from ``streams`` senders at full speed: packets/s received."""
    def client() -> Sample | None:
        before = _kernel_cpu_ticks()
        proc = in_ns(e.client_ns, ["iperf3", "-c", e.server_ip, "-p", str(UDP_PORT), "-u", "-b", "0",
                                   "-l", str(size), "-P", str(streams), "-t", str(seconds), "-J"],
                     check=False, timeout=seconds + 20)
        ticks = _kernel_cpu_ticks() - before
        out = iperf_json(proc.stdout)
        if "error" in out:
            return None if "refused" in out["error"] else Sample(None, {"error": out["error"]})
        total = out["end"]["sum"]
        received = total["packets"] - total["lost_packets"]
        return Sample(received / total["seconds"],
                      {"unit": "packets/s", "lost": total["lost_packets"], "sent": total["packets"],
                       "kernel_cpu_ns_per_packet": ticks * 1e9 / CLK_TCK / max(received, 1)})

    with server(e.server_ns, ["iperf3", "-s", "-1", "-B", e.server_ip, "-p", str(UDP_PORT)]):
        return until_listening(client) or Sample(None, {"error": "no server"})


_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")


def tcp_rr(e: Endpoints, seconds: int) -> Sample:
    """TCP ping-pong of one small message at a time: latency p50 and p99 (µs)."""
    def client() -> Sample | None:
        proc = in_ns(e.client_ns, ["sockperf", "pp", "--tcp", "-i", e.server_ip, "-p", str(SOCKPERF_PORT),
                                   "-t", str(seconds), "-m", "64"], check=False, timeout=seconds + 20)
        found = {float(p): float(v) for p, v in _PERCENTILE.findall(proc.stdout)}
        if 50.0 not in found:
            return None
        return Sample(found[50.0], {"unit": "µs", "p50": found[50.0], "p99": found.get(99.0)})

    with server(e.server_ns, ["sockperf", "sr", "--tcp", "-i", e.server_ip, "-p", str(SOCKPERF_PORT)]):
        return until_listening(client, tries=30) or Sample(None, {"error": "sockperf failed"})


def conn_rate(e: Endpoints, connections: int) -> Sample:
    """New TCP connections per second (connect, one line each way, close)."""
    async def main() -> connstorm.StormResult:
        server = await connstorm.EchoServer(e.server_ns, e.server_ip, CONN_PORT).start()
        try:
            jobs = [connstorm.Job(e.client_ns, 0, f"c{i}") for i in range(connections)]
            return await connstorm.storm(jobs, (e.server_ip, CONN_PORT), concurrency=64)
        finally:
            server.close()
    result = asyncio.run(main())
    return Sample(result.rate, {"unit": "connections/s", "failures": len(result.failures)})


METRICS = {"tcp_stream": tcp_stream, "udp_rate": udp_rate, "tcp_rr": tcp_rr}
