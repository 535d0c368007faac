"""Names derived from an attachment (vnetdp.naming): the host veth's name, and
the one hash it shares with the network plugin's record file."""
from __future__ import annotations

import os

import pytest

from vnetdp.naming import attachment_hash, host_ifname, is_host_ifname
from vnetdp.network.records import PodRecord, PodRecords


def test_host_ifname_is_vnd_plus_11_hex_and_stable():
    name = host_ifname("abc", "eth0")
    assert len(name) == 14 and name.startswith("vnd")
    int(name[3:], 16)
    assert name == host_ifname("abc", "eth0") != host_ifname("abc", "eth1")


@pytest.mark.parametrize("container_id,ifname", [("abc", "eth0"), ("abc", "eth1"), ("c" * 64, "net1")])
def test_host_veth_and_record_file_share_one_hash(tmp_path, container_id, ifname):
    PodRecords(str(tmp_path)).save(PodRecord(container_id, ifname, "/run/netns/p", "10.3.1.1", "vnetdp-ipam"))
    [record_file] = os.listdir(PodRecords(str(tmp_path)).dir)
    digest = attachment_hash(container_id, ifname)
    assert host_ifname(container_id, ifname) == "vnd" + digest[:11]
    assert record_file == digest[:24] + ".json"


def test_the_hash_separates_container_id_and_ifname():
    assert attachment_hash("ab", "c") != attachment_hash("a", "bc")


@pytest.mark.parametrize("container_id", ["abc", "c" * 64, "ünïcode"])
def test_every_host_ifname_is_recognised(container_id):
    name = host_ifname(container_id, "eth0")
    assert is_host_ifname(name) and len(name) < 16  # IFNAMSIZ with its NUL


@pytest.mark.parametrize("name,expected", [
    ("vnd0123456789a", True),
    ("vndabcdefabcde", True),
    ("vnd0123456789A", False),    # upper case: not one of ours
    ("vnd0123456789", False),     # 10 digits
    ("vnd0123456789ab", False),   # 12 digits
    ("vnd0123456789g", False),
    ("vne0123456789a", False),
    ("xvnd0123456789", False),
    ("vnd", False),
    ("", False),
    ("eth0", False),
    ("vnd-inet", False),          # the lab's namespaces share the prefix
])
def test_is_host_ifname_accepts_exactly_vnd_and_11_lowercase_hex(name, expected):
    assert is_host_ifname(name) is expected
