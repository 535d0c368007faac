"""Where IPAM's addresses come from (vnetdp.ipam.sources): the interface
document in either form, matched by MAC, and static ranges; an unusable source
is an IpamError of its own kind."""
from __future__ import annotations

import ipaddress
import json

import pytest

from vnetdp.ipam.errors import BadIpamConfig, SourceUnavailable, StateIoError
from vnetdp.ipam.sources import Pool, load_pools, parse_document, pools_of, static_pools

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


def test_a_mac_the_document_lacks_without_wildcard_is_a_source_error():
    doc = parse_document(XML.replace('MacAddress="*"', 'MacAddress="000d3a0000fe"'))
    with pytest.raises(SourceUnavailable) as e:
        pools_of(doc, "02:00:00:00:00:99")
    assert "02:00:00:00:00:99" in e.value.msg


def test_json_form_reads_as_the_xml_form():
    doc = {"Interfaces": [{"MacAddress": "000D3A000001", "IsPrimary": True, "IPSubnets": [
        {"Prefix": "10.3.0.0/16", "IPAddresses": [{"Address": "10.3.0.4", "IsPrimary": True},
                                                  {"Address": "10.3.1.1", "IsPrimary": False}]}]}]}
    assert summary(pools_of(parse_document(json.dumps(doc)), None)) == [("10.3.0.0/16", "10.3.0.1", ["10.3.1.1"])]


@pytest.mark.parametrize("text", ["<Interfaces><Interface", "<Other/>", '{"Interfaces": [{"IPSubnets": [{}]}]}'])
def test_broken_documents_are_a_clear_source_error(text):
    with pytest.raises(SourceUnavailable) as e:
        parse_document(text)
    assert "interface document is not valid" in e.value.msg


@pytest.mark.parametrize("form", ["xml", "json"])
def test_file_source_reads_either_form(tmp_path, form):
    doc = tmp_path / f"interfaces.{form}"
    doc.write_text(XML if form == "xml" else json.dumps({"Interfaces": [{"MacAddress": "*", "IPSubnets": [
        {"Prefix": "10.3.0.0/16", "IPAddresses": [{"Address": "10.3.1.1", "IsPrimary": False}]}]}]}))
    pools = load_pools({"environment": "file", "file": str(doc)}, None)
    assert str(pools[0].subnet) == "10.3.0.0/16" and IP("10.3.1.1") in pools[0].addresses


@pytest.mark.parametrize("ipam,error", [
    ({"environment": "file"}, BadIpamConfig),
    ({"environment": "file", "file": "/nonexistent/vnd.xml"}, StateIoError),
    ({"environment": "azure", "url": "http://127.0.0.1:9/none"}, SourceUnavailable),
    ({"environment": "dhcp"}, BadIpamConfig),
    ({"environment": "static", "ranges": [[{"rangeStart": "10.9.0.1"}]]}, BadIpamConfig),
])
def test_unusable_sources_are_clear_errors(ipam, error):
    with pytest.raises(error) as e:
        load_pools(ipam, None)
    assert type(e.value) is error and e.value.msg


def test_an_unreachable_host_agent_says_what_to_check():
    with pytest.raises(SourceUnavailable) as e:
        load_pools({"environment": "azure", "url": "http://127.0.0.1:9/none"}, None)
    assert "127.0.0.1:9" in e.value.msg and "ipam.url" in e.value.hint


def test_static_ranges_exclude_the_gateway():
    [pool] = static_pools([[{"subnet": "10.9.0.0/29", "rangeStart": "10.9.0.1", "rangeEnd": "10.9.0.4"}]])
    assert summary([pool]) == [("10.9.0.0/29", "10.9.0.1", ["10.9.0.2", "10.9.0.3", "10.9.0.4"])]
