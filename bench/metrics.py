"""One measurement each: a number (and unit) for a path of a topology.

Clients run pinned on CLIENT_CPU and servers on SERVER_CPU. A veth hands a
packet to the next namespace on the sending CPU, so the kernel's whole path
up to the receiving socket runs on the client's CPU, in its context: the
client's CPU time per packet is the path's cost. Tools: iperf3 (TCP stream,
unpinned), the harness's own C tools in bench/tools/ (the small-packet flood,
UDP and TCP new flows), sockperf (TCP request/response, pinned with taskset, both
ends on one CPU and across CPUs)."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import ctools
from bench.topologies import PATHS, VETH, Endpoints
from vnetdp.lab.probe import server, tcp_transfer, until_listening
from vnetdp.lab.shell import in_ns

CLIENT_CPU = 0
SERVER_CPU = 1 % (os.cpu_count() or 1)
SOCKPERF_PORT = 11111
FLOOD_PORT = 5202
CONN_PORT = 7100
FLOOD_SIZE = 64        # UDP payload bytes
CONNS_IN_FLIGHT = 32
NEW_FLOW_PORT = 20000  # the first of the UDP new-flow test's destination ports; none is listened on
# Per measurement: within a pod's default SNAT quota (16384 flows, which the bench keeps) less
# what new_flows, just before, may still hold until the sweep (a flow per SNAT port: 4536).
NEW_FLOWS_UDP = 10000
NEW_FLOWS_UDP_MAX_S = 10
DRAIN_S = 0.2          # after a flood, for the last batches to reach the receiver


@dataclass(frozen=True)
class Sample:
    value: float | None
    extra: dict


def _whole(seconds: float) -> int:
    """iperf3 and sockperf take whole seconds, at least one."""
    return max(1, round(seconds))


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def tcp_stream(e: Endpoints, seconds: float) -> Sample:
    r = tcp_transfer(e.client_ns, e.server_ns, e.server_ip, seconds=_whole(seconds))
    return Sample(r.value if r.ok else None, {})


def flood(e: Endpoints, seconds: float) -> Sample:
    """Small UDP datagrams from a sendmmsg sender to a busy-polling receiver:
    packets/s received, loss, and the sender's CPU ns per datagram sent."""
    port = ["-p", str(FLOOD_PORT)]
    with ctools.Server(e.server_ns, "udpsink", ["-a", e.server_ip, *port, "-c", str(SERVER_CPU)]) as sink:
        sent = ctools.run_client(e.client_ns, "udpflood", ["-d", e.server_ip, *port, "-s", str(FLOOD_SIZE),
                                                           "-t", str(seconds), "-c", str(CLIENT_CPU)], seconds)
        time.sleep(DRAIN_S)
        received = sink.report()["received"]
    if not sent["sent"]:
        return Sample(None, {"error": f"nothing sent ({sent['errors']} failed sendmmsg calls)"})
    return Sample(received / sent["seconds"],
                  {"sent_pps": sent["sent"] / sent["seconds"], "loss": 1 - received / sent["sent"],
                   "sender_cpu_ns": sent["cpu_ns"] / sent["sent"], "send_errors": sent["errors"]})


_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")


def tcp_rr(e: Endpoints, seconds: float, server_cpu: int) -> Sample:
    """TCP ping-pong of one 64-byte message at a time, the client on CLIENT_CPU and
    the server on ``server_cpu``: latency p50 and p99 (µs)."""
    def client() -> Sample | None:
        proc = in_ns(e.client_ns, _pinned(CLIENT_CPU, [
            "sockperf", "pp", "--tcp", "-i", e.server_ip, "-p", str(SOCKPERF_PORT), "-t", str(_whole(seconds)),
            "-m", "64"]), check=False, timeout=_whole(seconds) + 20)
        found = {float(p): float(v) for p, v in _PERCENTILE.findall(proc.stdout)}
        if 50.0 not in found:
            return None
        return Sample(found[50.0], {"p99": found.get(99.0)})

    with server(e.server_ns, _pinned(server_cpu, ["sockperf", "sr", "--tcp", "-i", e.server_ip,
                                                  "-p", str(SOCKPERF_PORT)])):
        return until_listening(client, tries=30) or Sample(None, {"error": "sockperf failed"})


def new_flows(e: Endpoints, seconds: float) -> Sample:
    """New TCP connections per second, each from a new source port and reset once
    established, CONNS_IN_FLIGHT at a time: through a NAT, each one is a new
    translation. Also the client's CPU ns per connection."""
    port = ["-p", str(CONN_PORT)]
    with ctools.Server(e.server_ns, "connsink", ["-a", e.server_ip, *port, "-c", str(SERVER_CPU)]) as sink:
        out = ctools.run_client(e.client_ns, "connrate", ["-d", e.server_ip, *port, "-t", str(seconds),
                                                          "-c", str(CLIENT_CPU), "-n", str(CONNS_IN_FLIGHT)],
                                seconds)
        accepted = sink.report()["accepted"]
    made = out["connections"]
    return Sample(made / out["seconds"] if made else None,
                  {"failures": out["failures"], "accepted": accepted, "client_cpu_ns": out["cpu_ns"] / max(made, 1)})


def _udp_no_ports(ns: str) -> int:
    """Datagrams ``ns`` received for a port nothing listens on (Udp NoPorts)."""
    snmp = in_ns(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    head, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[head.index("NoPorts")])


def new_flows_udp(e: Endpoints, seconds: float) -> Sample:
    """NEW_FLOWS_UDP small datagrams from one socket, each to the next destination
    port, as fast as the pinned sender goes (``seconds`` does not apply): every
    datagram is a new flow, so through a NAT a new translation, and nothing
    else is new (no handshake, no socket per flow). The server's host counts
    them as datagrams for closed ports. New flows received per second, loss
    and the sender's CPU ns per flow."""
    before = _udp_no_ports(e.server_ns)
    sent = ctools.run_client(e.client_ns, "udpflood", [
        "-d", e.server_ip, "-p", str(NEW_FLOW_PORT), "-n", str(NEW_FLOWS_UDP), "-s", str(FLOOD_SIZE),
        "-c", str(CLIENT_CPU), "-t", str(NEW_FLOWS_UDP_MAX_S)], NEW_FLOWS_UDP_MAX_S)
    time.sleep(DRAIN_S)
    received = _udp_no_ports(e.server_ns) - before
    if not sent["sent"]:
        return Sample(None, {"error": f"nothing sent ({sent['errors']} failed sendmmsg calls)"})
    return Sample(received / sent["seconds"], {"loss": 1 - received / sent["sent"],
                                               "sender_cpu_ns": sent["cpu_ns"] / sent["sent"]})


@dataclass(frozen=True)
class Metric:
    measure: Callable[[Endpoints, float], Sample]
    unit: str                       # of the value as reported (value * scale)
    higher_is_better: bool
    paths: tuple[str, ...]          # where it is measured
    extras: tuple[str, ...] = ()    # sample fields summarized along with the value
    cost: str | None = None         # CPU per unit: its excess over the limit's is the datapath's added cost
    scale: float = 1


DATA_PATHS = (*PATHS, VETH)
METRICS = {
    "tcp_stream": Metric(tcp_stream, "Gbit/s", True, DATA_PATHS),
    "flood": Metric(flood, "Mpackets/s", True, DATA_PATHS, ("loss", "sender_cpu_ns"), "sender_cpu_ns", 1e-6),
    "tcp_rr_same": Metric(functools.partial(tcp_rr, server_cpu=CLIENT_CPU), "µs p50", False, DATA_PATHS, ("p99",)),
    "tcp_rr_cross": Metric(functools.partial(tcp_rr, server_cpu=SERVER_CPU), "µs p50", False, DATA_PATHS,
                           ("p99",)),
    "new_flows": Metric(new_flows, "connections/s", True, ("internet",), ("client_cpu_ns", "failures"),
                        "client_cpu_ns"),
    # after new_flows, which would find the pod's SNAT quota held by these flows until the sweep (30 s)
    "new_flows_udp": Metric(new_flows_udp, "flows/s", True, ("internet",), ("loss", "sender_cpu_ns"),
                            "sender_cpu_ns"),
}


def measure(name: str, e: Endpoints, seconds: float) -> Sample:
    """Metric ``name`` on ``e``; a tool that fails gives a sample with no value and the error."""
    try:
        return METRICS[name].measure(e, seconds)
    except (ctools.ToolFailed, subprocess.TimeoutExpired) as err:
        return Sample(None, {"error": str(err)})
