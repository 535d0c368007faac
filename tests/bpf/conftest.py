"""Packet-level harness: the real programs, a test build with redirect tracing,
scapy frames in and out through BPF_PROG_TEST_RUN. No namespace is created:
runs happen in the test process's namespace on ``lo`` (ifindex 1), and nothing
is attached anywhere."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.l2 import Ether

from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.loader import Datapath

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
HOW = {0: "drop", 1: "pass", 2: "egress", 3: "peer"}
SNAT_TABLE_SIZE = 64  # entries in the test build: small enough to fill

# The test node: ifindex 1 (lo) is the pod veth the frames arrive on.
NIC_IFINDEX, NIC_MAC, GW_MAC = 2, "00:0d:3a:00:00:01", "12:34:56:78:9a:bc"
PRIMARY = "10.3.0.4"
POD_A = dict(ip="10.3.1.1", ep=M.Endpoint(1, "02:00:00:00:00:0a", "02:00:00:00:01:0a"))
POD_B = dict(ip="10.3.1.2", ep=M.Endpoint(7, "02:00:00:00:00:0b", "02:00:00:00:01:0b"))


@dataclass
class Run:
    retval: int
    frame: Ether
    raw: bytes
    redirect_ifindex: int
    how: str


@pytest.fixture(scope="session")
def datapath(bpffs_mount: str, tmp_path_factory) -> Datapath:
    dp = Datapath(Bpffs(os.path.join(bpffs_mount, "pkt")), str(tmp_path_factory.mktemp("lock")),
                  cflags=("-DVND_TEST_TRACE", f"-DVND_MAX_SNAT={SNAT_TABLE_SIZE}",
                          "-DVND_SNAT_REUSE_NS=0"))
    dp.ensure_loaded()
    return dp


@pytest.fixture
def maps(datapath: Datapath) -> Iterator[M.Maps]:
    """Maps configured for the test node, emptied again afterwards."""
    m = M.Maps(datapath.bpffs.maps_dir)
    m.put_node(M.Node(NIC_IFINDEX, NIC_MAC, GW_MAC, PRIMARY))
    m.put_cidr("10.3.0.0/16", M.Dest.VNET)
    m.put_cidr(f"{PRIMARY}/32", M.Dest.HOST)
    for pod in (POD_A, POD_B):
        m.put_endpoint(pod["ip"], pod["ep"])
    yield m
    for ip in m.endpoints():
        m.delete_endpoint(ip)
    for net in m.cidrs():
        m.delete_cidr(net)
    for key in list(m._metrics.keys()):
        m._metrics.delete(key)
    for entry in m.snat_entries():
        m.delete_snat(entry)
    m.put_node(M.Node(0, "00:00:00:00:00:00", "00:00:00:00:00:00", "0.0.0.0", 0, 0, 0))
    m.close()


@pytest.fixture
def run(datapath: Datapath):
    """run(program, frame) -> Run, with the redirect the program asked for."""
    trace = M.PinnedMap(f"{datapath.bpffs.maps_dir}/trace", M.u32, M.TraceC)
    fds: dict[str, int] = {}

    def _run(prog: str, frame) -> Run:
        if prog not in fds:
            fds[prog] = datapath.prog_fd(prog)
        trace.put(M.u32(0), M.TraceC(0, 0))
        retval, out, _ = syscall.prog_test_run(fds[prog], bytes(frame))
        t = trace.get(M.u32(0))
        return Run(retval, Ether(out), out, t.ifindex, HOW[t.how])

    yield _run
    for fd in fds.values():
        os.close(fd)
    trace.close()


def metric(maps: M.Maps, ifindex: int, reason: str) -> int:
    """Packets counted for (ifindex, reason)."""
    from vnetdp.datapath.reasons import by_name
    code = by_name(reason).code
    return sum(m.packets for m in maps.metrics() if m.ifindex == ifindex and m.reason == code)


def checksums_ok(frame: Ether) -> bool:
    """True when every checksum in the frame verifies: IPv4 header, TCP/UDP with
    the pseudo-header (a UDP zero means none), ICMP, and the IPv4 header an
    ICMP error quotes."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, in4_chksum
    from scapy.utils import checksum

    ip = frame[IP]
    raw = bytes(ip)
    ok = checksum(raw[:ip.ihl * 4]) == 0
    l4 = raw[ip.ihl * 4:ip.len]
    if TCP in ip or (UDP in ip and ip[UDP].chksum):
        ok &= in4_chksum(ip.proto, ip, l4) == 0
    if ICMP in ip:
        ok &= checksum(l4) == 0
        if IPerror in ip:
            inner = bytes(ip[IPerror])
            ok &= checksum(inner[:ip[IPerror].ihl * 4]) == 0
    return ok
