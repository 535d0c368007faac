"""Monitor events on scapy frames: the programs of the test build write real
struct vnd_event records into the pinned ring buffer through BPF_PROG_TEST_RUN,
and they are read back through vnetdp.datapath.ringbuf (no bcc) and
vnetdp.ops.monitor, as `vnetdp monitor` reads them."""
from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from pkt_harness import GW_MAC, NIC_IFINDEX, NIC_MAC, POD_A, POD_B, PRIMARY, TC_ACT_SHOT
from vnetdp.datapath import layout_version as LV
from vnetdp.datapath import layouts as L
from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.ringbuf import BPF_MAP_TYPE_RINGBUF, RingBuffer, record_size
from vnetdp.ops import monitor
from vnetdp.ops.inspect import NodeDirs

A, B = POD_A["ep"], POD_B["ep"]
DROPS, TRACE, NIC_PASS = M.MONITOR_DROPS, M.MONITOR_TRACE, M.MONITOR_NIC_PASS
SPOOFED = "10.3.1.99"


def from_a(dst: str, src: str = POD_A["ip"], l4=None):
    return (Ether(src=A.pod_mac, dst=A.host_mac) / IP(src=src, dst=dst) /
            (l4 if l4 is not None else TCP(sport=40000, dport=80)))


def from_fabric(dst: str, ttl: int = 63):
    return Ether(src=GW_MAC, dst=NIC_MAC) / IP(src="10.3.0.100", dst=dst, ttl=ttl) / UDP(sport=5000, dport=53)


@pytest.fixture
def ring(datapath) -> Iterator[RingBuffer]:
    """The events ring buffer, with what earlier tests left consumed."""
    with RingBuffer(f"{datapath.bpffs.maps_dir}/events") as r:
        r.skip()
        yield r


@pytest.fixture
def switch(maps) -> Iterator:
    """switch(flags): the monitor switch, cleared after the test."""
    yield maps.set_monitor
    maps.set_monitor(0)


def events(ring: RingBuffer) -> list[monitor.Event]:
    return [monitor.decode(raw) for raw in ring.read()]


# --- the maps -------------------------------------------------------------------------------

def test_the_events_map_is_a_256_kib_ring_buffer_and_the_switch_starts_off(datapath, maps):
    fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/events")
    try:
        info = syscall.obj_info(fd, syscall.MapInfo())
    finally:
        os.close(fd)
    assert (info.type, info.max_entries, info.key_size, info.value_size) == (BPF_MAP_TYPE_RINGBUF, 256 * 1024, 0, 0)
    assert maps.monitor().flags == 0


def test_struct_vnd_event_has_the_compiled_members_and_offsets(datapath):
    """cffi's reading of the record against clang's (the record type is the
    ring buffer table's leaf, so it is in the programs' BTF)."""
    fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/monitor")
    try:
        btf = LV.Btf(syscall.btf_data(syscall.obj_info(fd, syscall.MapInfo()).btf_id))
    finally:
        os.close(fd)
    [tid] = [i for i, t in enumerate(btf.types) if t is not None and t.kind == 4 and btf.name(t.name_off) == "vnd_event"]
    assert btf.shape(tid) == LV.cffi_shape(L.ffi(), "struct vnd_event")


# --- what is written when ------------------------------------------------------------------

def test_with_the_switch_off_no_event_is_written(maps, run, ring):
    assert run("from_container", from_a("10.3.0.100", src=SPOOFED)).retval == TC_ACT_SHOT
    run("from_container", from_a("10.3.0.100"))
    run("from_nic", from_fabric(POD_A["ip"]))
    run("from_nic_xdp", from_fabric(POD_A["ip"], ttl=1))
    assert ring.pending() == 0 and ring.read() == []


def test_drops_only_writes_drops(maps, run, ring, switch):
    switch(DROPS)
    run("from_container", from_a("10.3.0.100"))              # forwarded
    run("from_container", from_a("10.3.0.100", src=SPOOFED))  # dropped
    run("from_nic", from_fabric(POD_A["ip"]))                 # forwarded
    assert [e.reason.name for e in events(ring)] == ["DROP_SPOOF_IP"]


def test_a_spoofed_packets_event_has_its_reason_endpoint_addresses_and_ports(maps, run, ring, switch):
    switch(DROPS)
    frame = from_a("10.3.0.100", src=SPOOFED)
    before = time.monotonic_ns()
    run("from_container", frame)
    [e] = events(ring)
    assert before <= e.ts_ns <= time.monotonic_ns()
    assert (e.hook, e.direction, e.reason.name, e.reason.is_drop) == ("from_container", "from-pod",
                                                                      "DROP_SPOOF_IP", True)
    assert (e.ifindex, e.out_ifindex, e.length) == (A.ifindex, 0, len(bytes(frame)))
    assert (e.protocol, e.saddr, e.sport, e.daddr, e.dport) == (
        "tcp", ipaddress.IPv4Address(SPOOFED), 40000, ipaddress.IPv4Address("10.3.0.100"), 80)


def test_traces_show_forwarded_packets_and_where_they_went(maps, run, ring, switch):
    switch(DROPS | TRACE)
    run("from_container", from_a("10.3.0.100"))
    run("from_container", from_a(POD_B["ip"], l4=UDP(sport=5353, dport=53)))
    run("from_container", from_a("10.3.0.100", src=SPOOFED))
    vnet, local, spoofed = events(ring)
    assert (vnet.reason.name, vnet.ifindex, vnet.out_ifindex) == ("FWD_VNET", A.ifindex, NIC_IFINDEX)
    assert (str(vnet.saddr), vnet.sport, str(vnet.daddr), vnet.dport) == (POD_A["ip"], 40000, "10.3.0.100", 80)
    assert (local.reason.name, local.out_ifindex, local.protocol, local.sport, local.dport) == (
        "FWD_LOCAL", B.ifindex, "udp", 5353, 53)
    assert spoofed.reason.name == "DROP_SPOOF_IP"


def test_a_translated_packets_trace_carries_the_translated_source(maps, run, ring, switch):
    switch(TRACE)
    run("from_container", from_a("198.18.0.1"))
    [e] = events(ring)
    assert (e.reason.name, str(e.saddr), str(e.daddr), e.dport) == ("FWD_SNAT", PRIMARY, "198.18.0.1", 80)
    assert 61000 <= e.sport <= 65535


def test_icmp_and_arp_events_carry_type_code_and_arp_addresses(maps, run, ring, switch):
    switch(DROPS | TRACE)
    run("from_container", from_a("10.3.0.100", l4=ICMP(type=8, code=0)))
    run("from_container", Ether(src=A.pod_mac, dst="ff:ff:ff:ff:ff:ff") /
        ARP(op=1, hwsrc=A.pod_mac, psrc=SPOOFED, pdst="169.254.1.1"))
    icmp, arp = events(ring)
    assert (icmp.protocol, icmp.sport, icmp.dport) == ("icmp", 8, 0)
    assert icmp.endpoints() == (POD_A["ip"], "10.3.0.100 (type 8 code 0)")
    assert (arp.reason.name, arp.protocol, str(arp.saddr), str(arp.daddr)) == (
        "DROP_SPOOF_IP", "arp", SPOOFED, "169.254.1.1")


def test_the_hosts_own_traffic_from_the_nic_is_traced_only_when_asked_for(maps, run, ring, switch):
    switch(DROPS | TRACE)
    run("from_nic", from_fabric(PRIMARY))
    assert events(ring) == []
    switch(DROPS | TRACE | NIC_PASS)
    run("from_nic", from_fabric(PRIMARY))
    [e] = events(ring)
    assert (e.hook, e.direction, e.reason.name, str(e.daddr)) == ("from_nic", "nic", "PASS_NIC", PRIMARY)


@pytest.mark.parametrize("prog", ["from_nic", "from_nic_xdp"])
def test_drops_at_the_nic_name_their_hook_and_the_pod(maps, run, ring, switch, prog):
    switch(DROPS)
    frame = from_fabric(POD_A["ip"], ttl=1)
    run(prog, frame)
    [e] = events(ring)
    assert (e.hook, e.direction, e.reason.name, e.ifindex) == (prog, "to-pod", "DROP_TTL_EXCEEDED", A.ifindex)
    assert (e.length, e.protocol, e.sport, e.dport) == (len(bytes(frame)), "udp", 5000, 53)


def test_a_full_ring_buffer_loses_events_counts_them_and_never_blocks(datapath, maps, ring, switch):
    """More drops than the ring holds in one BPF_PROG_TEST_RUN: what fits is
    read back whole, the rest is counted lost; once read, the ring takes
    events again, now wrapping around its end."""
    switch(DROPS)
    fits = ring.size // record_size(L.sizeof("struct vnd_event"))
    lost_before = maps.monitor().lost
    fd = datapath.prog_fd("from_container")
    try:
        retval, _, _ = syscall.prog_test_run(fd, bytes(from_a("10.3.0.100", src=SPOOFED)), repeat=fits + 500)
        assert retval == TC_ACT_SHOT
        got = events(ring)
        assert len(got) == fits and {e.reason.name for e in got} == {"DROP_SPOOF_IP"}
        assert maps.monitor().lost - lost_before == fits + 500 - len(got)
        assert [e.ts_ns for e in got] == sorted(e.ts_ns for e in got)
        for _ in range(3):  # positions now run past the end of the data area
            syscall.prog_test_run(fd, bytes(from_a("10.3.0.100", src=SPOOFED)), repeat=fits // 2)
            assert len(events(ring)) == fits // 2
    finally:
        os.close(fd)


# --- the monitor as `vnetdp monitor` runs it ------------------------------------------------

def _monitor(datapath, tmp_path, filt, send, **kw) -> list[str]:
    lines: list[str] = []
    monitor.run(NodeDirs(str(tmp_path), datapath.bpffs.root), filt, lines.append, started=send, **kw)
    return lines


def test_the_monitor_shows_a_spoofed_drop_with_its_endpoint_and_clears_the_switch(datapath, maps, run, tmp_path):
    lines = _monitor(datapath, tmp_path, monitor.Filter(),
                     lambda: [run("from_container", from_a("10.3.0.100")),
                              run("from_container", from_a("10.3.0.100", src=SPOOFED))],
                     json_lines=True, count=1, seconds=5)
    [line] = lines
    e = json.loads(line)
    assert {k: e[k] for k in ("hook", "direction", "reason", "drop", "ifindex", "kind", "interface", "protocol",
                              "saddr", "sport", "daddr", "dport")} == {
        "hook": "from_container", "direction": "from-pod", "reason": "DROP_SPOOF_IP", "drop": True,
        "ifindex": A.ifindex, "kind": "pod", "interface": "lo", "protocol": "tcp", "saddr": SPOOFED, "sport": 40000,
        "daddr": "10.3.0.100", "dport": 80}
    assert abs(e["time"] - time.time()) < 5
    assert maps.monitor().flags == 0


def test_the_monitor_filters_by_pod_and_reason_and_renders_lines(datapath, maps, run, tmp_path):
    def send():
        run("from_container", from_a("10.3.0.100", src=SPOOFED))   # pod A's drop
        run("from_container", from_a(POD_B["ip"]))                  # A into B: FWD_LOCAL
        run("from_nic", from_fabric(POD_A["ip"]))                   # into A: FWD_TO_POD

    by_b = _monitor(datapath, tmp_path, monitor.Filter(trace=True, pod=POD_B["ip"]), send, seconds=0.5)
    assert len(by_b) == 1 and "FWD_LOCAL" in by_b[0] and f"-> {POD_B['ip']}:80" in by_b[0]
    only = _monitor(datapath, tmp_path, monitor.Filter(monitor.parse_reasons(["fwd_to_pod"]), pod=POD_A["ip"]),
                    send, seconds=0.5)
    assert len(only) == 1 and "from_nic" in only[0] and "FWD_TO_POD" in only[0]
    drops = _monitor(datapath, tmp_path, monitor.Filter(), send, seconds=0.5)
    assert len(drops) == 1 and "DROP_SPOOF_IP" in drops[0] and f"tcp {SPOOFED}:40000 -> 10.3.0.100:80" in drops[0]
    assert maps.monitor().flags == 0


def test_a_second_monitor_is_refused_and_the_first_keeps_the_switch(datapath, maps, tmp_path):
    with monitor.only_monitor(datapath.bpffs.maps_dir):
        maps.set_monitor(DROPS)
        with pytest.raises(monitor.MonitorError, match="another vnetdp monitor"):
            _monitor(datapath, tmp_path, monitor.Filter(), None, seconds=0.1)
        assert maps.monitor().flags == DROPS
    maps.set_monitor(0)


# --- the command, as a process ------------------------------------------------------------

def _command(datapath, tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vnetdp.cli", "monitor", *args, "--state-dir", str(tmp_path),
                             "--bpffs-dir", datapath.bpffs.root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _switched_on(maps, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while maps.monitor().flags == 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


def test_vnetdp_monitor_prints_a_drop_within_a_second_and_ends_after_count(datapath, maps, run, tmp_path):
    proc = _command(datapath, tmp_path, "--json", "--count", "1")
    try:
        _switched_on(maps, proc)
        sent = time.monotonic()
        run("from_container", from_a("10.3.0.100", src=SPOOFED))
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        line = proc.stdout.readline() if ready else ""
        assert time.monotonic() - sent < 1.0 and json.loads(line)["reason"] == "DROP_SPOOF_IP"
        assert proc.wait(timeout=10) == 0, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    assert maps.monitor().flags == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_vnetdp_monitor_switches_events_off_when_stopped(datapath, maps, tmp_path, how):
    proc = _command(datapath, tmp_path, "--trace")
    try:
        _switched_on(maps, proc)
        assert maps.monitor().flags == DROPS | TRACE
        proc.send_signal(how)
        assert proc.wait(timeout=10) == 0, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    assert maps.monitor().flags == 0


def test_vnetdp_monitor_refuses_an_unknown_reason_before_touching_the_switch(datapath, maps, tmp_path):
    proc = _command(datapath, tmp_path, "--reason", "DROP_NOPE", "--seconds", "1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "unknown reason(s) DROP_NOPE" in err
    assert maps.monitor().flags == 0


def test_a_node_pinned_before_the_monitor_keeps_working_and_the_monitor_says_why_it_cannot(datapath, tmp_path):
    """Maps opens the switch only when asked; the monitor names the missing maps."""
    old = os.path.join(os.path.dirname(datapath.bpffs.root), "before-monitor")
    os.makedirs(f"{old}/maps")
    pinned = []
    try:
        for name in sorted(os.listdir(datapath.bpffs.maps_dir)):
            if name in ("monitor", "events"):
                continue
            fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/{name}")
            try:
                syscall.obj_pin(fd, f"{old}/maps/{name}")
                pinned.append(f"{old}/maps/{name}")
            finally:
                os.close(fd)
        with M.Maps(f"{old}/maps") as m:
            assert m.node() is None or m.node().nic_ifindex
            with pytest.raises(syscall.BpfError):
                m.monitor()
        with pytest.raises(monitor.MonitorError, match="no monitor or events map: it runs a build from before"):
            monitor.run(NodeDirs(str(tmp_path), old), monitor.Filter(), print, seconds=0.1)
    finally:
        for pin in pinned:
            os.unlink(pin)
        os.rmdir(f"{old}/maps")
        os.rmdir(old)
