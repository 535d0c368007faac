"""Per-program cost in ns per packet: BPF_PROG_TEST_RUN with repeat, on the
real programs in a private bpffs, with 1 to N endpoints in the map (a flat
line is the claim: lookups are hashes, not scans)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from vnetdp.datapath import bpffs, syscall
from vnetdp.datapath import maps as M
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.loader import Programs

NIC_MAC, GW_MAC, PRIMARY = "00:0d:3a:00:00:01", "12:34:56:78:9a:bc", "10.3.0.4"
POD_MAC, HOST_MAC = "02:00:00:00:00:0a", "02:00:00:00:01:0a"


def pod_ip(j: int) -> str:
    return f"10.3.{1 + j // 250}.{1 + j % 250}"


CASES = {  # name -> (program, frame)
    "pod-to-vnet (from_container)": ("from_container", Ether(src=POD_MAC, dst=HOST_MAC) /
                                     IP(src=pod_ip(0), dst="10.3.0.100") / TCP(sport=40000, dport=80)),
    "pod-to-pod (from_container)": ("from_container", Ether(src=POD_MAC, dst=HOST_MAC) /
                                    IP(src=pod_ip(0), dst=pod_ip(1)) / TCP(sport=40000, dport=80)),
    "pod-to-internet, SNAT (from_container)": ("from_container", Ether(src=POD_MAC, dst=HOST_MAC) /
                                               IP(src=pod_ip(0), dst="198.18.0.1") / TCP(sport=40000, dport=80)),
    "vnet-to-pod (from_nic, tc)": ("from_nic", Ether(src=GW_MAC, dst=NIC_MAC) /
                                   IP(src="10.3.0.100", dst=pod_ip(0)) / TCP(sport=80, dport=40000)),
    "vnet-to-pod (from_nic_xdp)": ("from_nic_xdp", Ether(src=GW_MAC, dst=NIC_MAC) /
                                   IP(src="10.3.0.100", dst=pod_ip(0)) / TCP(sport=80, dport=40000)),
}


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


def measure(endpoint_counts: list[int], repeat: int = 200_000) -> list[dict]:
    """ns per packet for every case at every endpoint count."""
    rows = []
    with datapath() as dp, M.Maps(dp.bpffs.maps_dir) as m:
        m.put_node(M.Node(2, NIC_MAC, GW_MAC, PRIMARY))
        m.put_cidr("10.3.0.0/16", M.Dest.VNET)
        m.put_cidr(f"{PRIMARY}/32", M.Dest.HOST)
        fds = {prog: dp.prog_fd(prog) for prog, _ in CASES.values()}
        try:
            present = 0
            for count in sorted(endpoint_counts):
                for j in range(present, count):
                    m.put_endpoint(pod_ip(j), M.Endpoint(1 if j == 0 else 100 + j, POD_MAC, HOST_MAC))
                present = max(present, count)
                for case, (prog, frame) in CASES.items():
                    _, _, ns = syscall.prog_test_run(fds[prog], bytes(frame), repeat=repeat)
                    rows.append({"case": case, "endpoints": count, "ns_per_packet": ns})
        finally:
            for fd in fds.values():
                os.close(fd)
    return rows
