"""Map layouts have one source (maps.h's layouts section), and typed access round trips.

Python reads the layouts with cffi; the programs are compiled by clang. The
layout tests hold cffi's reading against the BTF that clang emitted for every
pinned map: every key and value, and every struct they contain, must have
the same size and the same members at the same offsets.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from pkt_harness import POD_A
from vnetdp.datapath import layout_version
from vnetdp.datapath import layouts as L
from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.reasons import reasons

# BTF kinds (the kernel's ABI numbers) this test walks.
BTF_ARRAY, BTF_STRUCT, BTF_UNION, BTF_TYPEDEF = 3, 4, 5, 8
BTF_VOLATILE, BTF_CONST, BTF_RESTRICT = 9, 10, 11


class Btf(layout_version.Btf):
    """The product's BTF reader, with what this test asks of it: C names and
    every struct inside a type, member offsets in bytes."""

    def c_name(self, tid: int) -> str:
        t = self.types[tid]
        return {BTF_STRUCT: "struct ", BTF_UNION: "union "}.get(t.kind, "") + self.name(t.name_off)

    def structs(self, tid: int) -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
        """C name -> (size, [(member, byte offset, size)]) of ``tid`` and every struct inside it."""
        t = self.types[tid]
        if t.kind in (BTF_TYPEDEF, BTF_VOLATILE, BTF_CONST, BTF_RESTRICT):
            return self.structs(t.size_or_type)
        if t.kind == BTF_ARRAY:
            return self.structs(t.array[0])
        if t.kind not in (BTF_STRUCT, BTF_UNION):
            return {}
        members = [(self.name(m), mt, off & 0xFFFFFF if t.kind_flag else off) for m, mt, off in t.members]
        found = {self.c_name(tid): (t.size_or_type, [(m, off // 8, self.size(mt)) for m, mt, off in members])}
        for _, mt, _ in members:
            found.update(self.structs(mt))
        return found


@dataclass
class CompiledMap:
    name: str
    key: str
    value: str
    key_size: int
    value_size: int


@pytest.fixture(scope="module")
def compiled(datapath) -> tuple[list[CompiledMap], dict[str, tuple[int, list[tuple[str, int, int]]]]]:
    """Every pinned map's key and value as clang compiled them, and the struct
    layouts they hold, read from the maps' BTF."""
    maps, structs = [], {}
    for name in sorted(os.listdir(datapath.bpffs.maps_dir)):
        fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/{name}")
        try:
            info = syscall.obj_info(fd, syscall.MapInfo())
        finally:
            os.close(fd)
        if not info.key_size and not info.value_size:
            continue  # a ring buffer (events): records, no key or value, so no BTF (test_monitor.py)
        assert info.btf_id, f"map {name} has no BTF"
        btf = Btf(syscall.btf_data(info.btf_id))
        key, value = info.btf_key_type_id, info.btf_value_type_id
        maps.append(CompiledMap(name, btf.c_name(key), btf.c_name(value), info.key_size, info.value_size))
        structs.update(btf.structs(key))
        structs.update(btf.structs(value))
    return maps, structs


def test_every_map_key_and_value_is_a_layouts_type_of_the_compiled_size(compiled):
    maps, _ = compiled
    assert {m.name for m in maps} >= {"endpoints", "node", "vnet_cidrs", "metrics", "snat", "snat_quota",
                                     "snat_frags", "host_flows", "bandwidth", "trace"}
    for m in maps:
        assert (L.sizeof(m.key), L.sizeof(m.value)) == (m.key_size, m.value_size), m.name


# struct vnd_event is the events ring buffer's record, no map's key or value:
# test_monitor.py holds it against the programs' BTF.
@pytest.mark.parametrize("name", sorted(set(L.ffi().list_types()[1]) - {"vnd_event"}))
def test_every_struct_cffi_knows_has_the_compiled_members_and_offsets(compiled, name):
    _, structs = compiled
    ctype = f"struct {name}"
    assert ctype in structs, f"{ctype} is in the layouts section but no map holds it"
    members = [(m, f.offset, L.ffi().sizeof(f.type)) for m, f in L.ffi().typeof(ctype).fields]
    assert (L.sizeof(ctype), members) == structs[ctype]


def test_a_type_the_layouts_section_lacks_fails_loudly(datapath):
    with pytest.raises(L.LayoutError, match="'struct vnd_nope' is not declared in the layouts section"):
        L.new("struct vnd_nope")
    with pytest.raises(L.LayoutError, match="enum vnd_nope is not declared"):
        L.enum("vnd_nope")
    # A map opened with a layout that is not its own is refused, not misread.
    with pytest.raises(L.LayoutError, match=r"node: the map's key and value are 4 and 32 bytes"):
        M.PinnedMap(f"{datapath.bpffs.maps_dir}/node", "__u32", "struct vnd_endpoint")


def test_a_layouts_section_cffi_cannot_read_fails_loudly(tmp_path):
    text = L.MAPS_H.read_text()
    bad = tmp_path / "maps.h"
    bad.write_text(text.replace("#define VND_NODE_SNAT 2", "#define VND_NODE_SNAT (1 << 1)"))
    with pytest.raises(L.LayoutError, match="not C that cffi's cdef accepts"):
        L.parse(bad)
    bad.write_text(text.replace(L.END, ""))
    with pytest.raises(L.LayoutError, match="want one line"):
        L.parse(bad)


def test_every_define_of_the_section_is_a_python_constant():
    _, source = L.section(L.MAPS_H.read_text(), "maps.h")
    defines = re.findall(r"^\s*#\s*define\s+VND_(\w+)", source, re.M)
    assert defines and all(M.CONSTANTS[d] == getattr(M, d) for d in defines)
    assert M.SNAT_IN == L.enum("vnd_snat_dir")["VND_SNAT_IN"]
    assert [d.name for d in M.Dest] == ["OUTSIDE", "VNET", "HOST"]


def test_endpoint_node_and_cidr_round_trip(maps):
    ep = M.Endpoint(42, "02:aa:bb:cc:dd:ee", "02:11:22:33:44:55")
    maps.put_endpoint("10.3.1.9", ep)
    assert maps.endpoint("10.3.1.9") == ep
    assert ipaddress.IPv4Address("10.3.1.9") in maps.endpoints()
    assert maps.delete_endpoint("10.3.1.9") and not maps.delete_endpoint("10.3.1.9")
    assert maps.node().primary_ip == ipaddress.IPv4Address("10.3.0.4")
    assert maps.cidrs()[ipaddress.IPv4Network("10.3.0.0/16")] is M.Dest.VNET


def test_big_endian_fields_hold_network_order_and_read_back_in_host_order():
    a, b = ipaddress.IPv4Address("10.3.1.9"), ipaddress.IPv4Address("198.18.0.1")
    entry = M.SnatEntry(M.SNAT_OUT, 6, a, b, 40000, 443, a, 0, 0, 0)
    key = entry.key()
    assert L.ffi().buffer(key)[:12] == a.packed + b.packed + (40000).to_bytes(2, "big") + (443).to_bytes(2, "big")
    assert M.SnatEntry.from_c(key, L.new("struct vnd_snat_val", {"addr": M.ip_be32(a)})) == entry


def test_reason_table_parses_and_separates_drops():
    table = reasons()
    assert table[64].name == "DROP_SPOOF_IP" and table[64].is_drop
    assert not table[1].is_drop
    assert all(r.description for r in table.values())


def test_node_flow_limit_round_trips_and_defaults_to_no_limit(maps):
    node = maps.node()
    assert node.snat_flows_per_endpoint == 0
    maps.put_node(M.Node(**{**node.__dict__, "snat_flows_per_endpoint": 500}))
    assert maps.node().snat_flows_per_endpoint == 500


def test_snat_quota_round_trips_and_a_missing_count_is_zero(maps):
    pod = ipaddress.IPv4Address("10.3.1.9")
    assert maps.snat_quota(pod) == 0 and maps.snat_quotas() == {}
    maps.put_snat_quota(str(pod), 7)
    assert maps.snat_quota(pod) == 7 and maps.snat_quotas() == {pod: 7}
    assert maps.delete_snat_quota(pod) and not maps.delete_snat_quota(pod)
    assert maps.snat_quota(pod) == 0


def test_host_flows_are_listed_and_deleted(maps, run):
    ep = POD_A["ep"]
    for l4 in (TCP(sport=40000, dport=8080, flags="S"), UDP(sport=5353, dport=53)):
        run("to_container", Ether(src=ep.host_mac, dst=ep.pod_mac) / IP(src="198.51.100.7", dst=POD_A["ip"]) / l4)
    pod, remote = ipaddress.IPv4Address(POD_A["ip"]), ipaddress.IPv4Address("198.51.100.7")
    flows = sorted(maps.host_flows(), key=lambda f: f.proto)
    assert flows == [M.HostFlow(pod, remote, 8080, 40000, 6), M.HostFlow(pod, remote, 53, 5353, 17)]
    assert all(f.last_seen_ns > 0 for f in flows)
    assert maps.delete_host_flow(flows[0]) and not maps.delete_host_flow(flows[0])
    assert maps.host_flows() == flows[1:]


def test_a_map_set_opens_only_the_maps_a_call_uses_and_closes_them_together(datapath):
    """An ADD touches a few of the node's maps: opening all of them (and
    checking their sizes) cost ~20 bpf() calls per ADD."""
    m = M.Maps(datapath.bpffs.maps_dir)
    with m:
        assert m.opened == {}
        assert m.endpoint("10.255.255.254") is None
        assert set(m.opened) == {"_endpoints"}
        fd = m.opened["_endpoints"].fd
        assert m.is_pinned(M.Maps._bandwidth) and "_bandwidth" not in m.opened
    assert m.opened == {}
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_map_that_is_not_pinned_fails_when_used_not_when_the_set_opens(tmp_path):
    with M.Maps(str(tmp_path)) as m:
        assert not m.is_pinned(M.Maps._endpoints)
        with pytest.raises(syscall.BpfError) as e:
            m.endpoint("10.3.1.1")
        assert e.value.errno == errno.ENOENT


def test_open_all_reports_a_missing_map_and_a_closed_set_is_not_reopened(datapath):
    """Status and reconcile open every map to report a missing or foreign one;
    a set used after close would leak the descriptors it reopened."""
    partial = os.path.join(os.path.dirname(datapath.bpffs.root), "one-map-of-eight")
    os.makedirs(partial)
    fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/endpoints")
    try:
        syscall.obj_pin(fd, f"{partial}/endpoints")
        m = M.Maps(partial)
        with pytest.raises(syscall.BpfError) as e:
            m.open_all()
        assert e.value.errno == errno.ENOENT and m.opened == {} and m.closed
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{partial}/endpoints")
        os.rmdir(partial)
    m = M.Maps(datapath.bpffs.maps_dir).open_all()
    assert {"_endpoints", "_snat", "_bandwidth", "_metrics"} <= set(m.opened) and "_monitor" not in m.opened
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.endpoint("10.3.1.1")
