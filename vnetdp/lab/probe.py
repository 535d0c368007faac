"""Traffic probes between lab namespaces: ping and a TCP transfer (iperf3)."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from vnetdp.lab.shell import in_ns

IPERF_PORT = 5201
T = TypeVar("T")


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    value: float | None  # ms for ping, Gbit/s for TCP
    detail: str = ""


def ping(src_ns: str, dst: str, count: int = 3) -> ProbeResult:
    proc = in_ns(src_ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", str(dst)],
                 check=False, timeout=count + 5)
    return ping_result(proc, count)


def ping_result(proc: subprocess.CompletedProcess, count: int) -> ProbeResult:
    """What a finished ping of ``count`` echoes measured: every reply back, and
    the average round trip (ms). Reads iputils' summary ("3 received", "rtt
    min/avg/max/mdev = ...") and busybox's ("3 packets received", "round-trip
    min/avg/max = ...", a container's ping)."""
    m = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    received = re.search(r"(\d+) (?:packets )?received", proc.stdout)
    ok = proc.returncode == 0 and received is not None and int(received.group(1)) == count
    return ProbeResult(ok, float(m.group(1)) if m else None, proc.stdout.strip().splitlines()[-1] if proc.stdout else "")


@contextlib.contextmanager
def server(ns: str, argv: list[str]) -> Iterator[subprocess.Popen]:
    """A server process in ``ns`` for the block, stopped afterwards."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def until_listening(attempt: Callable[[], T | None], tries: int = 50) -> T | None:
    """The first result of ``attempt``, which returns None while the server is
    not listening yet; None if it never did."""
    for _ in range(tries):
        result = attempt()
        if result is not None:
            return result
        time.sleep(0.1)
    return None


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Whether ``condition`` came true within ``seconds`` (polled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def tcp_transfer(src_ns: str, dst_ns: str, dst: str, seconds: int = 1, connect: str | None = None) -> ProbeResult:
    """iperf3 from src_ns to a one-shot server in dst_ns listening on dst
    (``connect``: the address the client connects to, when the fabric
    translates it to dst)."""
    def client() -> ProbeResult | None:
        proc = in_ns(src_ns, ["iperf3", "-c", str(connect or dst), "-p", str(IPERF_PORT), "-t", str(seconds),
                              "-J", "--connect-timeout", "1000"], check=False, timeout=seconds + 15)
        result = iperf_json(proc.stdout)
        if proc.returncode == 0 and "error" not in result:
            return ProbeResult(True, result["end"]["sum_received"]["bits_per_second"] / 1e9)
        if "refused" in proc.stdout:
            return None
        return ProbeResult(False, None, result.get("error", proc.stdout.strip()[-200:]))

    with server(dst_ns, ["iperf3", "-s", "-1", "-B", str(dst), "-p", str(IPERF_PORT)]):
        return until_listening(client) or ProbeResult(False, None, "server never listened")


def iperf_json(out: str) -> dict:
    """iperf3's -J output, or an error entry when there is none."""
    try:
        return json.loads(out)
    except ValueError:
        return {"error": out.strip()[-200:] or "no output"}


def icmp_sweep(src_ns: str, addresses: list[str], timeout: float = 3.0) -> set[str]:
    """The addresses that answer one ICMP echo each, sent at once from ``src_ns``."""
    import os
    import select
    import socket
    import struct

    from vnetdp import netns

    def checksum(data: bytes) -> int:
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total & 0xFFFF) + (total >> 16)
        return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF

    ident = os.getpid() & 0xFFFF
    with netns.enter(src_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    answered: set[str] = set()
    with sock:
        for seq, addr in enumerate(addresses):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header), ident, seq), (addr, 0))
        deadline = time.monotonic() + timeout
        while len(answered) < len(addresses) and time.monotonic() < deadline:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            packet, (src, _) = sock.recvfrom(1500)
            ihl = (packet[0] & 0xF) * 4
            kind, _, _, rid, _ = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
            if kind == 0 and rid == ident:
                answered.add(src)
    return answered


def tcp_connect(src_ns: str, dst_ns: str, dst: str, port: int, timeout: float = 2.0) -> str | None:
    """One TCP connection from ``src_ns`` to a listener in ``dst_ns`` on
    ``dst:port``: the source address the listener saw, or None when the
    connection did not open within ``timeout``."""
    import socket

    from vnetdp import netns

    with netns.enter(dst_ns):
        listener = socket.create_server((dst, port))
    with listener:
        client = in_ns(src_ns, ["python3", "-c", "import socket; "
                                f"socket.create_connection(('{dst}', {port}), {timeout}).close()"],
                       check=False, timeout=timeout + 10)
        if client.returncode != 0:
            return None
        listener.settimeout(timeout)
        conn, peer = listener.accept()
        conn.close()
        return peer[0]
