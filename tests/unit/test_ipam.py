"""IPAM sources and the state store (SPEC §3), without a network."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from vnetdp.cni.attachments import Attachments, Record
from vnetdp.cni.spec import CniError, Code
from vnetdp.ipam import plugin
from vnetdp.ipam.sources import Pool, load_pools, parse_document, pools_of, static_pools
from vnetdp.ipam.store import Store

IP = ipaddress.IPv4Address
XML = """<Interfaces>
  <Interface MacAddress="000D3A000001" IsPrimary="true">
    <IPSubnet Prefix="10.3.0.0/16">
      <IPAddress Address="10.3.0.4" IsPrimary="true"/>
      <IPAddress Address="10.3.1.1" IsPrimary="false"/>
      <IPAddress Address="10.3.1.2" IsPrimary="false"/>
    </IPSubnet>
    <IPSubnet Prefix="10.4.0.0/24">
      <IPAddress Address="10.4.0.9" IsPrimary="false"/>
    </IPSubnet>
  </Interface>
  <Interface MacAddress="000d3a0000ff" IsPrimary="false">
    <IPSubnet Prefix="10.5.0.0/24"><IPAddress Address="10.5.0.7" IsPrimary="false"/></IPSubnet>
  </Interface>
  <Interface MacAddress="*" IsPrimary="false">
    <IPSubnet Prefix="10.6.0.0/24"><IPAddress Address="10.6.0.5" IsPrimary="false"/></IPSubnet>
  </Interface>
</Interfaces>"""


def summary(pools: list[Pool]) -> list[tuple[str, str, list[str]]]:
    return [(str(p.subnet), str(p.gateway), [str(a) for a in p.addresses]) for p in pools]


def test_xml_primary_interface_with_several_subnets_skips_primary_addresses():
    assert summary(pools_of(parse_document(XML), None)) == [
        ("10.3.0.0/16", "10.3.0.1", ["10.3.1.1", "10.3.1.2"]),
        ("10.4.0.0/24", "10.4.0.1", ["10.4.0.9"])]


@pytest.mark.parametrize("mac,subnet", [
    ("00:0d:3a:00:00:ff", "10.5.0.0/24"),   # matched by MAC, any case and separators
    ("00-0D-3A-00-00-01", "10.3.0.0/16"),
    ("02:00:00:00:00:99", "10.6.0.0/24"),   # no such NIC in the document: the "*" entry
])
def test_interfaces_are_matched_by_mac_with_wildcard(mac, subnet):
    assert str(pools_of(parse_document(XML), mac)[0].subnet) == subnet


def test_json_form_reads_as_the_xml_form():
    doc = {"Interfaces": [{"MacAddress": "000D3A000001", "IsPrimary": True, "IPSubnets": [
        {"Prefix": "10.3.0.0/16", "IPAddresses": [{"Address": "10.3.0.4", "IsPrimary": True},
                                                  {"Address": "10.3.1.1", "IsPrimary": False}]}]}]}
    assert summary(pools_of(parse_document(json.dumps(doc)), None)) == [("10.3.0.0/16", "10.3.0.1", ["10.3.1.1"])]


@pytest.mark.parametrize("text", ["<Interfaces><Interface", "<Other/>", '{"Interfaces": [{"IPSubnets": [{}]}]}'])
def test_broken_documents_are_a_clear_source_error(text):
    with pytest.raises(CniError) as e:
        parse_document(text)
    assert e.value.code == Code.SOURCE_UNAVAILABLE


@pytest.mark.parametrize("form", ["xml", "json"])
def test_file_source_reads_either_form(tmp_path, form):
    doc = tmp_path / f"interfaces.{form}"
    doc.write_text(XML if form == "xml" else json.dumps({"Interfaces": [{"MacAddress": "*", "IPSubnets": [
        {"Prefix": "10.3.0.0/16", "IPAddresses": [{"Address": "10.3.1.1", "IsPrimary": False}]}]}]}))
    pools = load_pools({"environment": "file", "file": str(doc)}, None)
    assert str(pools[0].subnet) == "10.3.0.0/16" and IP("10.3.1.1") in pools[0].addresses


@pytest.mark.parametrize("ipam,code", [
    ({"environment": "file"}, Code.INVALID_CONFIG),
    ({"environment": "file", "file": "/nonexistent/vnd.xml"}, Code.IO_FAILURE),
    ({"environment": "azure", "url": "http://127.0.0.1:9/none"}, Code.SOURCE_UNAVAILABLE),
    ({"environment": "dhcp"}, Code.INVALID_CONFIG),
])
def test_unusable_sources_are_clear_errors(ipam, code):
    with pytest.raises(CniError) as e:
        load_pools(ipam, None)
    assert e.value.code == code


def test_static_ranges_exclude_the_gateway():
    [pool] = static_pools([[{"subnet": "10.9.0.0/29", "rangeStart": "10.9.0.1", "rangeEnd": "10.9.0.4"}]])
    assert summary([pool]) == [("10.9.0.0/29", "10.9.0.1", ["10.9.0.2", "10.9.0.3", "10.9.0.4"])]


def pools(*addresses: str, subnet: str = "10.3.0.0/16") -> list[Pool]:
    return [Pool(ipaddress.IPv4Network(subnet), IP("10.3.0.1"), tuple(IP(a) for a in addresses))]


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path))
    with s.transaction() as state:
        state.refresh(pools("10.3.1.1", "10.3.1.2", "10.3.1.3"), 0)
    return s


def allocate(store: Store, cid: str, ifname: str = "eth0") -> str:
    with store.transaction() as state:
        return state.allocate(cid, ifname, 0).address


def test_allocation_is_idempotent_per_container_and_ifname_and_round_robin(store):
    a = allocate(store, "c1")
    assert allocate(store, "c1") == a
    b = allocate(store, "c1", "eth1")
    assert b != a
    with store.transaction() as state:
        state.release("c1", "eth0")
    assert allocate(store, "c2") not in (a, b)   # the released address is not handed out at once


def test_exhaustion_tells_the_operator_to_add_secondary_addresses(store):
    for cid in ("c1", "c2", "c3"):
        allocate(store, cid)
    before = open(store.path).read()
    with pytest.raises(CniError) as e:
        allocate(store, "c4")
    assert e.value.code == Code.POOL_EXHAUSTED and "10.3.0.0/16" in e.value.msg
    assert "add secondary IP addresses" in e.value.details
    assert open(store.path).read() == before  # a failed ADD changes nothing


def test_refresh_keeps_addresses_in_use_and_adds_new_ones(store):
    held = allocate(store, "c1")
    with store.transaction() as state:
        state.refresh(pools("10.3.1.9"), 1)        # held vanished from the source, .9 is new
        assert state.find("c1", "eth0").address == held
        assert state.free() == 1
    assert allocate(store, "c2") == "10.3.1.9"
    with pytest.raises(CniError):
        allocate(store, "c3")                      # held is not handed out again


@pytest.mark.parametrize("content", ["", "   \n", "{\"pools\": [", "{\"pools\": [], \"allocations\": [{\"x\": 1}]}"])
def test_corrupt_or_empty_state_is_reported_kept_and_never_replaced(store, content):
    with open(store.path, "w") as f:
        f.write(content)
    for _ in range(2):  # every call fails, nothing is handed out
        with pytest.raises(CniError) as e:
            allocate(store, "c1")
        assert e.value.code == Code.STATE_CORRUPT and "rebuild" in e.value.details
    assert open(store.path).read() == content
    asides = [n for n in os.listdir(store.dir) if ".corrupt-" in n]
    assert len(asides) == 1 and open(os.path.join(store.dir, asides[0])).read() == content


def test_rebuild_takes_the_addresses_of_recorded_attachments(store):
    atts = Attachments(store.dir)
    atts.save(Record("c1", "eth0", "/run/netns/p1", "10.3.1.2", "vnetdp-ipam", "10.3.0.0/16", "10.3.0.1"))
    atts.save(Record("c2", "eth0", "/run/netns/p2", "10.3.1.3", "host-local"))  # not ours
    with open(store.path, "w") as f:
        f.write("garbage")
    state = plugin.rebuild(store.dir)
    assert [(a.container_id, a.address) for a in state.allocations] == [("c1", "10.3.1.2")]
    with store.transaction() as state:
        assert state.find("c1", "eth0").address == "10.3.1.2"


def test_gc_releases_exactly_the_unlisted(store):
    for cid in ("c1", "c2", "c3"):
        allocate(store, cid)
    with store.transaction() as state:
        state.keep_only({("c2", "eth0")})
        assert [a.container_id for a in state.allocations] == ["c2"]
