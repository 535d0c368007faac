"""The IPAM state (vnetdp.ipam.store): allocation, refresh, a corrupt state
kept and reported, one lease file per allocated address, and rebuilding the
state from the leases."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from vnetdp.ipam.errors import PoolExhausted, StateCorrupt, StateIoError
from vnetdp.ipam.sources import Pool
from vnetdp.ipam.store import Allocation, Store

IP = ipaddress.IPv4Address


def pools(*addresses: str, subnet: str = "10.3.0.0/16") -> list[Pool]:
    return [Pool(ipaddress.IPv4Network(subnet), IP("10.3.0.1"), tuple(IP(a) for a in addresses))]


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path))
    with s.transaction() as state:
        state.refresh(pools("10.3.1.1", "10.3.1.2", "10.3.1.3"), 0)
    return s


def allocate(store: Store, cid: str, ifname: str = "eth0", network: str = "") -> str:
    with store.transaction() as state:
        return state.allocate(cid, ifname, 0, network).address


def corrupt(store: Store, content: str = "garbage") -> None:
    with open(store.path, "w") as f:
        f.write(content)


def lease_files(store: Store) -> dict[str, dict]:
    """The lease files by name, each as its JSON."""
    if not os.path.isdir(store.leases_dir):
        return {}
    return {name: json.load(open(os.path.join(store.leases_dir, name))) for name in os.listdir(store.leases_dir)}


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
    with pytest.raises(PoolExhausted) as e:
        allocate(store, "c4")
    assert "10.3.0.0/16" in e.value.msg and "add secondary IP addresses" in e.value.hint
    assert open(store.path).read() == before  # a failed ADD changes nothing
    assert len(lease_files(store)) == 3


def test_refresh_keeps_addresses_in_use_and_adds_new_ones(store):
    held = allocate(store, "c1")
    with store.transaction() as state:
        state.refresh(pools("10.3.1.9"), 1)        # held vanished from the source, .9 is new
        assert state.find("c1", "eth0").address == held
        assert state.free() == 1
    assert allocate(store, "c2") == "10.3.1.9"
    with pytest.raises(PoolExhausted):
        allocate(store, "c3")                      # held is not handed out again


BAD_POOL = '{{"pools": [{{"subnet": "10.3.0.0/16", "gateway": "10.3.0.1", "addresses": [{}]}}], "allocations": []}}'


@pytest.mark.parametrize("content", ["", "   \n", "{\"pools\": [", "{\"pools\": [], \"allocations\": [{\"x\": 1}]}",
                                     BAD_POOL.format('"10.3.1.300"'), BAD_POOL.format('"10.3.1"'),
                                     BAD_POOL.format('"10.3.1.1/32"'), BAD_POOL.format("7")])
def test_corrupt_or_empty_state_is_reported_kept_and_never_replaced(store, content):
    corrupt(store, content)
    for _ in range(2):  # every call fails, nothing is handed out
        with pytest.raises(StateCorrupt) as e:
            allocate(store, "c1")
        assert "rebuild" in e.value.hint
    assert open(store.path).read() == content
    asides = [n for n in os.listdir(store.dir) if ".corrupt-" in n]
    assert len(asides) == 1 and open(os.path.join(store.dir, asides[0])).read() == content


def test_an_unreadable_state_is_an_io_error(tmp_path):
    os.mkdir(tmp_path / "ipam.json")  # read() fails with EISDIR, not as a corrupt file
    with pytest.raises(StateIoError) as e:
        allocate(Store(str(tmp_path)), "c1")
    assert "cannot read IPAM state" in e.value.msg


def test_each_allocated_address_has_a_lease_file_until_released(store):
    a = allocate(store, "c1")
    b = allocate(store, "c2", "eth1", "net1")
    leases = lease_files(store)
    assert leases == {a: {"container_id": "c1", "ifname": "eth0", "address": a, "subnet": "10.3.0.0/16",
                          "gateway": "10.3.0.1", "time": 0, "network": ""},
                      b: {**leases[a], "container_id": "c2", "ifname": "eth1", "address": b, "network": "net1"}}
    assert sorted(store.leases(), key=lambda x: x.container_id) == [
        Allocation("c1", "eth0", a, "10.3.0.0/16", "10.3.0.1", 0),
        Allocation("c2", "eth1", b, "10.3.0.0/16", "10.3.0.1", 0, "net1")]
    with store.transaction() as state:
        state.release("c1")
    assert list(lease_files(store)) == [b]
    with store.transaction() as state:
        state.keep_only(set(), "net1")
    assert lease_files(store) == {} and store.leases() == []


def test_unreadable_lease_files_are_skipped(store):
    a = allocate(store, "c1")
    for name, content in [("10.3.1.7", "not json"), ("10.3.1.8", '{"container_id": "c9"}')]:
        with open(os.path.join(store.leases_dir, name), "w") as f:
            f.write(content)
    assert [lease.address for lease in store.leases()] == [a]


def test_a_temp_file_left_by_a_crash_is_no_lease(store):
    a = allocate(store, "c1")
    os.rename(os.path.join(store.leases_dir, a), os.path.join(store.leases_dir, f"{a}.tmp-4242"))
    with store.transaction() as state:
        state.release("c1")
    assert store.leases() == []   # else a rebuild hands the released address back to c1


def test_rebuild_takes_the_addresses_of_the_leases(store):
    """What ``vnetdp ipam rebuild`` and GC do with a corrupt state: the given
    leases become the allocations, the other lease files go."""
    allocate(store, "c1")
    kept = allocate(store, "c2")
    corrupt(store)
    with pytest.raises(StateCorrupt):
        allocate(store, "c3")
    state = store.rebuild(a for a in store.leases() if a.container_id == "c2")
    assert [(a.container_id, a.address) for a in state.allocations] == [("c2", kept)]
    assert list(lease_files(store)) == [kept]
    with store.transaction() as state:
        assert state.find("c2", "eth0").address == kept and state.pools == []
        state.refresh(pools("10.3.1.1", "10.3.1.2", "10.3.1.3"), 1)
        assert state.allocate("c3", "eth0", 1).address != kept   # the kept address is not handed out


def test_gc_releases_exactly_the_unlisted(store):
    for cid in ("c1", "c2", "c3"):
        allocate(store, cid)
    with store.transaction() as state:
        state.keep_only({("c2", "eth0")}, "")
        assert [a.container_id for a in state.allocations] == ["c2"]


def test_gc_touches_only_its_own_networks_allocations(store):
    """An allocation without a network (from before they carried one) is any network's."""
    allocate(store, "a1", network="net-a")
    kept = allocate(store, "b1", network="net-b")
    allocate(store, "old")
    with store.transaction() as state:
        gone = state.keep_only(set(), "net-a")
        assert sorted(a.container_id for a in gone) == ["a1", "old"]
        assert [a.container_id for a in state.allocations] == ["b1"]
    assert list(lease_files(store)) == [kept]
