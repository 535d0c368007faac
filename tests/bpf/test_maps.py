"""The Python mirrors of the C map structs, and typed access round trips."""
from __future__ import annotations

import ctypes
import ipaddress

import pytest

from vnetdp.datapath import maps as M
from vnetdp.datapath import syscall
from vnetdp.datapath.reasons import reasons


@pytest.mark.parametrize("name,key,value", [
    ("endpoints", M.Ipv4, M.EndpointC),
    ("node", M.u32, M.NodeC),
    ("vnet_cidrs", M.CidrKeyC, M.u8),
    ("metrics", M.MetricsKeyC, M.MetricsValC),
    ("snat", M.SnatKeyC, M.SnatValC),
])
def test_python_structs_match_what_the_kernel_holds(datapath, name, key, value):
    fd = syscall.obj_get(f"{datapath.bpffs.maps_dir}/{name}")
    info = syscall.obj_info(fd, syscall.MapInfo())
    assert (info.key_size, info.value_size) == (ctypes.sizeof(key), ctypes.sizeof(value))


def test_endpoint_node_and_cidr_round_trip(maps):
    ep = M.Endpoint(42, "02:aa:bb:cc:dd:ee", "02:11:22:33:44:55")
    maps.put_endpoint("10.3.1.9", ep)
    assert maps.endpoint("10.3.1.9") == ep
    assert ipaddress.IPv4Address("10.3.1.9") in maps.endpoints()
    assert maps.delete_endpoint("10.3.1.9") and not maps.delete_endpoint("10.3.1.9")
    assert maps.node().primary_ip == ipaddress.IPv4Address("10.3.0.4")
    assert maps.cidrs()[ipaddress.IPv4Network("10.3.0.0/16")] is M.Dest.VNET


def test_reason_table_parses_and_separates_drops():
    table = reasons()
    assert table[64].name == "DROP_SPOOF_IP" and table[64].is_drop
    assert not table[1].is_drop
    assert all(r.description for r in table.values())
