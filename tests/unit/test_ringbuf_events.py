"""What `vnetdp monitor` makes of ring buffer records (vnetdp.ops.monitor),
without a datapath: decoding struct vnd_event as maps.h lays it out, the
switch flags a monitor sets, filters by reason and pod, and output lines."""
from __future__ import annotations

import ipaddress
import json
import socket

import pytest

from vnetdp.datapath import layouts as L
from vnetdp.datapath import maps as M
from vnetdp.ops import monitor

POD = {"kind": "pod", "interface": "vnd0123456789a", "container_id": "c0ffee" * 8, "namespace": "shop",
       "pod": "cart-0", "address": "10.3.1.5", "owner": "cni"}
OTHER = {"kind": "pod", "interface": "vndfedcba98765", "container_id": "abc", "namespace": "", "pod": "",
         "address": "10.3.1.6", "owner": "cni"}
NIC = {"kind": "nic", "interface": "eth0", "container_id": "", "namespace": "", "pod": "", "address": "10.3.0.4",
       "owner": "node"}
IDS = {7: POD, 8: OTHER, 2: NIC}


def record(**fields) -> bytes:
    """A struct vnd_event as the datapath writes it (network order where the
    header has it): a spoofed TCP packet from ifindex 7 by default."""
    f = {"ts_ns": 5_000_000_000, "ifindex": 7, "out_ifindex": 0, "len": 54, "hook": 1, "dir": 0, "reason": 64,
         "proto": 6, "ethertype": 0x0800, "saddr": "10.3.1.99", "daddr": "10.3.0.100", "sport": 40000,
         "dport": 80, **fields}
    c = L.new("struct vnd_event", {
        **{k: f[k] for k in ("ts_ns", "ifindex", "out_ifindex", "len", "hook", "dir", "reason", "proto")},
        "ethertype": socket.htons(f["ethertype"]), "saddr": M.ip_be32(f["saddr"]), "daddr": M.ip_be32(f["daddr"]),
        "sport": socket.htons(f["sport"]), "dport": socket.htons(f["dport"])})
    return bytes(L.ffi().buffer(c))


def ids(known: dict | None = None) -> monitor.Identities:
    return monitor.Identities(lambda: dict(IDS if known is None else known))


def test_a_record_decodes_to_its_fields():
    e = monitor.decode(record())
    assert (e.ts_ns, e.hook, e.direction, e.reason.name, e.ifindex, e.out_ifindex, e.length) == (
        5_000_000_000, "from_container", "from-pod", "DROP_SPOOF_IP", 7, 0, 54)
    assert (e.protocol, e.saddr, e.sport, e.daddr, e.dport) == (
        "tcp", ipaddress.IPv4Address("10.3.1.99"), 40000, ipaddress.IPv4Address("10.3.0.100"), 80)
    assert len(record()) == L.sizeof("struct vnd_event") == 40


def test_a_record_of_another_layout_is_refused_not_misread():
    with pytest.raises(monitor.MonitorError, match="events differ"):
        monitor.decode(record() + b"\0" * 8)


@pytest.mark.parametrize("fields,protocol,ends", [
    ({}, "tcp", ("10.3.1.99:40000", "10.3.0.100:80")),
    ({"proto": 1, "sport": 3, "dport": 1}, "icmp", ("10.3.1.99", "10.3.0.100 (type 3 code 1)")),
    ({"proto": 47, "sport": 0, "dport": 0}, "ip/47", ("10.3.1.99", "10.3.0.100")),
    ({"ethertype": 0x0806, "proto": 0, "sport": 0, "dport": 0}, "arp", ("10.3.1.99", "10.3.0.100")),
    ({"ethertype": 0x86DD, "proto": 0, "saddr": "0.0.0.0", "daddr": "0.0.0.0"}, "ipv6", ("", "")),
], ids=["tcp", "icmp", "gre", "arp", "ipv6"])
def test_protocols_and_endpoints_as_printed(fields, protocol, ends):
    e = monitor.decode(record(**fields))
    assert (e.protocol, e.endpoints()) == (protocol, ends)


def test_hooks_are_the_programs_names():
    assert monitor.hooks() == {1: "from_container", 2: "to_container", 3: "from_nic", 4: "from_nic_xdp"}


@pytest.mark.parametrize("trace,reasons,flags", [
    (False, [], M.MONITOR_DROPS),
    (True, [], M.MONITOR_DROPS | M.MONITOR_TRACE),
    (False, ["DROP_SPOOF_IP"], M.MONITOR_DROPS),
    (False, ["FWD_LOCAL"], M.MONITOR_TRACE),
    (False, ["fwd_local", "VND_DROP_MARTIAN"], M.MONITOR_DROPS | M.MONITOR_TRACE),
    (False, ["PASS_NIC"], M.MONITOR_TRACE | M.MONITOR_NIC_PASS),
])
def test_the_switch_asks_for_what_the_monitor_shows(trace, reasons, flags):
    assert monitor.switch_flags(trace, monitor.parse_reasons(reasons)) == flags


def test_an_unknown_reason_is_refused_naming_the_known_ones():
    with pytest.raises(monitor.MonitorError, match=r"unknown reason\(s\) DROP_NOPE; reasons are: .*DROP_SPOOF_IP"):
        monitor.parse_reasons(["DROP_NOPE"])


@pytest.mark.parametrize("pod,shown", [
    ("cart-0", True), ("shop/cart-0", True), ("c0ffee" * 8, True), ("vnd0123456789a", True), ("10.3.1.5", True),
    ("other/cart-0", False), ("10.3.1.6", False), ("eth0", False),
])
def test_a_pod_filter_matches_its_name_container_veth_or_address(pod, shown):
    assert monitor.Filter(pod=pod).shows(monitor.decode(record()), ids()) is shown


def test_a_pod_address_filter_matches_packets_carrying_it_and_the_pod_a_packet_went_into():
    to_it = monitor.decode(record(ifindex=2, daddr="10.3.1.6", reason=66, dir=1))
    assert monitor.Filter(pod="10.3.1.6").shows(to_it, ids())
    into_it = monitor.decode(record(reason=1, out_ifindex=8, daddr="10.3.1.200"))
    filt = monitor.Filter(trace=True, pod="abc")
    assert filt.shows(into_it, ids()) and not filt.shows(monitor.decode(record()), ids())


def test_reasons_shown_drops_by_default_traces_when_asked_or_named():
    fwd, drop = monitor.decode(record(reason=2)), monitor.decode(record())
    assert [monitor.Filter().shows(e, ids()) for e in (fwd, drop)] == [False, True]
    assert [monitor.Filter(trace=True).shows(e, ids()) for e in (fwd, drop)] == [True, True]
    named = monitor.Filter(monitor.parse_reasons(["FWD_VNET"]))
    assert [named.shows(e, ids()) for e in (fwd, drop)] == [True, False]


def test_identities_are_read_again_for_an_unknown_ifindex_at_most_once_a_second():
    reads, now = [], [100.0]

    def read():
        reads.append(now[0])
        return {7: POD} if len(reads) > 1 else {}

    known = monitor.Identities(read, clock=lambda: now[0])
    assert known.get(7) is None and len(reads) == 1       # just read: not again yet
    now[0] += monitor.REFRESH_S
    assert known.get(7) == POD and len(reads) == 2
    assert known.get(0) is None and known.get(7) == POD and len(reads) == 2
    assert not monitor.Filter(pod="nobody").known_pod(known) and monitor.Filter(pod="cart-0").known_pod(known)


def test_a_line_names_time_hook_reason_pod_flow_target_and_length():
    e = monitor.decode(record())
    line = monitor.render(e, ids(), clock_offset=0.0)
    assert line.split()[1:] == ["from_container", "DROP_SPOOF_IP", "shop/cart-0", "tcp", "10.3.1.99:40000", "->",
                                "10.3.0.100:80", "len", "54"]
    fwd = monitor.render(monitor.decode(record(reason=1, out_ifindex=8, daddr="10.3.1.6")), ids(), 0.0)
    assert "FWD_LOCAL" in fwd and "=> abc (vndfedcba98765)" in fwd
    unknown = monitor.render(monitor.decode(record(ifindex=42)), ids(), 0.0)
    assert "ifindex 42" in unknown


def test_a_json_line_has_the_endpoint_and_the_packet():
    d = monitor.as_dict(monitor.decode(record()), ids(), clock_offset=1_700_000_000.0)
    assert json.loads(json.dumps(d)) == d
    assert d == {"time": 1_700_000_005.0, "hook": "from_container", "direction": "from-pod",
                 "reason": "DROP_SPOOF_IP", "drop": True, "ifindex": 7, "interface": "vnd0123456789a", "kind": "pod",
                 "namespace": "shop", "pod": "cart-0", "container_id": "c0ffee" * 8, "out_ifindex": 0, "out": "",
                 "protocol": "tcp", "saddr": "10.3.1.99", "sport": 40000, "daddr": "10.3.0.100", "dport": 80,
                 "length": 54}
