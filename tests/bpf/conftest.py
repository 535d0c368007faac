"""Packet-level harness: the real programs, a test build with redirect tracing,
scapy frames in and out through BPF_PROG_TEST_RUN. No namespace is created:
runs happen in the test process's namespace on ``lo`` (ifindex 1), and nothing
is attached anywhere."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scapy.layers.l2 import Ether

from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.loader import PROGRAMS, Programs

from pkt_harness import (GW_MAC, HOW, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, SKB_SIZE, SNAT_TABLE_SIZE, Run,
                         empty_pinned, skb_ctx, skb_fields)


@pytest.fixture(scope="session")
def datapath(bpffs_mount: str, tmp_path_factory) -> Programs:
    dp = Programs(Bpffs(os.path.join(bpffs_mount, "pkt")), str(tmp_path_factory.mktemp("lock")),
                  cflags=("-DVND_TEST_TRACE", f"-DVND_MAX_SNAT={SNAT_TABLE_SIZE}",
                          "-DVND_SNAT_REUSE_NS=0"))
    dp.load()
    return dp


@pytest.fixture
def maps(datapath: Programs) -> Iterator[M.Maps]:
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
    m.clear_metrics()
    for entry in m.snat_entries():
        m.delete_snat(entry)
    for ip in m.snat_quotas():
        m.delete_snat_quota(ip)
    for flow in m.host_flows():
        m.delete_host_flow(flow)
    for ip in m.bandwidths():
        m.delete_bandwidth(ip)
    empty_pinned(f"{m.dir}/snat_frags", "struct vnd_snat_frag_key", "struct vnd_snat_frag_val")
    m.put_node(M.Node(0, "00:00:00:00:00:00", "00:00:00:00:00:00", "0.0.0.0", 0, 0, 0))
    m.close()


@pytest.fixture
def run(datapath: Programs):
    """run(program, frame) -> Run, with the redirect the program asked for."""
    trace = M.PinnedMap(f"{datapath.bpffs.maps_dir}/trace", "__u32", "struct vnd_redirect_trace")
    fds: dict[str, int] = {}

    def _run(prog: str, frame, mark: int = 0) -> Run:
        """``mark``: the skb's mark as a tc program gets it."""
        if prog not in fds:
            fds[prog] = datapath.prog_fd(prog)
        trace.put(0, {})
        tc = PROGRAMS[prog][1] == "tc"
        ctx = bytearray(SKB_SIZE) if tc else None
        retval, out, _ = syscall.prog_test_run(fds[prog], bytes(frame), ctx=skb_ctx(mark) if tc else None,
                                               ctx_out=ctx)
        t = trace.get(0)
        return Run(retval, Ether(out), out, t.ifindex, HOW[t.how], *(skb_fields(ctx) if tc else (0, 0)))

    yield _run
    for fd in fds.values():
        os.close(fd)
    trace.close()
