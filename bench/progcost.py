"""Per-program cost in ns per packet: BPF_PROG_TEST_RUN with repeat, on the
real programs in a private bpffs, with 1 to N endpoints in the map (a flat
line is the claim: lookups are hashes, not scans).

BPF_PROG_TEST_RUN runs a program ``repeat`` times on one packet, each run on
what the last one left: a forwarded frame has its MACs rewritten and its TTL
decremented every run. So the test node gives the NIC, the pods and their
host ends one MAC (the rewrite leaves the source MAC as it was), frames
start at TTL 255 and go through at most 250 runs each. A translated packet
cannot run again as it was (its source is the primary IP afterwards): SNAT
is measured in single runs (at most 20 000), which carry the timer's floor
(the ``floor`` row: an empty program). After every case the counters must show that each run took
the path the case names.

The monitor's cost: from_container with the switch off (one array lookup
per packet), on for drops, a forwarded packet (no event) and a dropped one
(a 40-byte event each, the ring buffer read empty between batches as a
monitor does), and a dropped one with the ring buffer full (each event
counted lost).

    python -m bench.progcost [--repeat N] [--endpoints 1 50 250]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from vnetdp.datapath import bpffs, syscall
from vnetdp.datapath import maps as M
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.loader import Programs
from vnetdp.datapath.reasons import by_name
from vnetdp.datapath.ringbuf import RingBuffer

MAC, GW_MAC, PRIMARY = "02:00:00:00:00:0a", "12:34:56:78:9a:bc", "10.3.0.4"
NIC_IFINDEX, TTL, RUNS_PER_FRAME = 2, 255, 250   # a frame is forwarded TTL - 1 times
SINGLE_RUNS = 20_000    # at most, for cases measured one run per call (a syscall each)


def pod_ip(j: int) -> str:
    return f"10.3.{1 + j // 250}.{1 + j % 250}"


def _from_pod(src: str, dst: str) -> bytes:
    return bytes(Ether(src=MAC, dst=MAC) / IP(src=src, dst=dst, ttl=TTL) / TCP(sport=40000, dport=80))


def _from_fabric(dst: str) -> bytes:
    return bytes(Ether(src=GW_MAC, dst=MAC) / IP(src="10.3.0.100", dst=dst, ttl=TTL) / TCP(sport=80, dport=40000))


@dataclass(frozen=True)
class Case:
    prog: str
    frame: bytes
    reason: str                 # the path every run must take
    runs_per_frame: int = 0     # 0: as many as asked (the frame comes out as it went in)
    monitor: int = 0            # the monitor switch (MONITOR_* flags)
    ring: str = "drained"       # with the monitor on: "drained" between batches, or left "full"


SPOOFED = _from_pod("10.3.9.9", "10.3.0.100")
CASES = {
    "pod-to-vnet (from_container)": Case("from_container", _from_pod(pod_ip(0), "10.3.0.100"), "FWD_VNET",
                                         RUNS_PER_FRAME),
    "pod-to-pod (from_container)": Case("from_container", _from_pod(pod_ip(0), pod_ip(1)), "FWD_LOCAL",
                                        RUNS_PER_FRAME),
    "pod-to-internet, SNAT (from_container, single runs)": Case(
        "from_container", _from_pod(pod_ip(0), "198.18.0.1"), "FWD_SNAT", 1),
    "vnet-to-pod (from_nic, tc)": Case("from_nic", _from_fabric(pod_ip(0)), "FWD_TO_POD", RUNS_PER_FRAME),
    "vnet-to-pod (from_nic_xdp)": Case("from_nic_xdp", _from_fabric(pod_ip(0)), "FWD_TO_POD", RUNS_PER_FRAME),
    "floor: an empty XDP program (single runs)": Case("pod_xdp_pass", SPOOFED, "", 1),
    # the monitor
    "pod-to-vnet (from_container), monitor on: drops": Case(
        "from_container", _from_pod(pod_ip(0), "10.3.0.100"), "FWD_VNET", RUNS_PER_FRAME, M.MONITOR_DROPS),
    "spoofed, dropped (from_container), monitor off": Case("from_container", SPOOFED, "DROP_SPOOF_IP"),
    "spoofed, dropped (from_container), monitor on: drops": Case(
        "from_container", SPOOFED, "DROP_SPOOF_IP", 0, M.MONITOR_DROPS),
    "spoofed, dropped (from_container), monitor on, ring full": Case(
        "from_container", SPOOFED, "DROP_SPOOF_IP", 0, M.MONITOR_DROPS, "full"),
}


class WrongPath(AssertionError):
    """A case's runs did not all take the path it names: its number would lie."""


@contextlib.contextmanager
def datapath() -> Iterator[Programs]:
    top = tempfile.mkdtemp(prefix="vnd-bench-")
    mount = os.path.join(top, "bpffs")
    bpffs.mount(mount)
    try:
        dp = Programs(Bpffs(os.path.join(mount, "vnetdp")), top)
        dp.load()
        yield dp
    finally:
        bpffs.unmount(mount)
        shutil.rmtree(top, ignore_errors=True)


def _run(fd: int, case: Case, repeat: int, ring: RingBuffer) -> int:
    """Mean ns per run over ``repeat`` runs, in batches of at most
    ``runs_per_frame`` (and, while events are written and read, half the
    ring buffer's events)."""
    batch = case.runs_per_frame or repeat
    if case.monitor and case.ring == "drained":
        batch = min(batch, ring.size // 2 // 48)
    total = done = 0
    while done < repeat:
        n = min(batch, repeat - done)
        _, _, ns = syscall.prog_test_run(fd, case.frame, repeat=n)
        if case.ring == "drained":
            ring.skip()
        total, done = total + ns * n, done + n
    return round(total / done)


def measure_case(fds: dict[str, int], m: M.Maps, ring: RingBuffer, case: Case, repeat: int) -> int:
    if case.runs_per_frame == 1:
        repeat = min(repeat, SINGLE_RUNS)
    m.clear_metrics()
    m.set_monitor(case.monitor)
    try:
        ring.skip()
        if case.ring == "full":  # fill it first: then every event is lost
            syscall.prog_test_run(fds[case.prog], case.frame, repeat=ring.size // 48 + 1)
            m.clear_metrics()
        ns = _run(fds[case.prog], case, repeat, ring)
    finally:
        m.set_monitor(0)
        ring.skip()
    if case.reason:
        counted = {x.reason: x.packets for x in m.metrics()}
        if counted != {by_name(case.reason).code: repeat}:
            raise WrongPath(f"{case.prog}: {repeat} runs should all be {case.reason}, the counters say {counted}")
    return ns


@dataclass(frozen=True)
class BenchNode:
    """A node for BPF_PROG_TEST_RUN: its maps (node and VNet configured), its
    events ring buffer and a descriptor for each program the cases run."""
    dp: Programs
    maps: M.Maps
    ring: RingBuffer
    fds: dict[str, int]

    def measure(self, case: Case, repeat: int) -> int:
        return measure_case(self.fds, self.maps, self.ring, case, repeat)


@contextlib.contextmanager
def bench_node(cases: list[Case]) -> Iterator[BenchNode]:
    """A private bpffs with the programs loaded, configured as the test node,
    for the programs ``cases`` run; all of it removed afterwards."""
    with datapath() as dp, M.Maps(dp.bpffs.maps_dir) as m, RingBuffer(f"{dp.bpffs.maps_dir}/events") as ring:
        m.put_node(M.Node(NIC_IFINDEX, MAC, GW_MAC, PRIMARY))
        m.put_cidr("10.3.0.0/16", M.Dest.VNET)
        m.put_cidr(f"{PRIMARY}/32", M.Dest.HOST)
        fds: dict[str, int] = {}
        try:
            for case in cases:
                if case.prog not in fds:
                    fds[case.prog] = dp.prog_fd(case.prog)
            yield BenchNode(dp, m, ring, fds)
        finally:
            for fd in fds.values():
                os.close(fd)


def measure(endpoint_counts: list[int], repeat: int = 200_000) -> list[dict]:
    """ns per packet for every case at every endpoint count (the map always
    holds the two pods the cases send from and to)."""
    rows = []
    with bench_node(list(CASES.values())) as node:
        present = 0
        for count in sorted(endpoint_counts):
            for j in range(present, max(count, 2)):
                node.maps.put_endpoint(pod_ip(j), M.Endpoint(1 if j == 0 else 100 + j, MAC, MAC))
            present = max(present, count, 2)
            for name, case in CASES.items():
                rows.append({"case": name, "endpoints": count, "ns_per_packet": node.measure(case, repeat)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000, help="runs per measurement")
    parser.add_argument("--endpoints", type=int, nargs="+", default=[1], help="endpoints in the map")
    args = parser.parse_args(argv)
    counts = sorted(set(args.endpoints))
    by_case: dict[str, dict[int, int]] = {}
    for r in measure(counts, args.repeat):
        by_case.setdefault(r["case"], {})[r["endpoints"]] = r["ns_per_packet"]
    width = max(map(len, by_case))
    print(f"{'ns/packet':<{width}} " + " ".join(f"{c:>6} ep" for c in counts))
    for case, row in by_case.items():
        print(f"{case:<{width}} " + " ".join(f"{row[c]:>9}" for c in counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
