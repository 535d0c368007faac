"""The Docker IPAM driver over a real unix socket, on the node's one IPAM store
shared with the CNI IPAM plugin (called here as vnetdp calls it, in-process):
pools are the NIC's subnets, the gateway costs no secondary address, --ip
gets exactly its address or a clear error, exhaustion says what to do and
leaves nothing allocated, and every address has one owner whose release or
GC never touches the other's."""
from __future__ import annotations

import json
import os

import pytest

from docker_fakes import (GATEWAY, IPAM, POOL_ID, SECONDARIES, SUBNET, FakePlumbing, create_network, docker_id,
                          endpoint_body, plugin_on, remove_container, run_container)
from helpers import cni_env
from vnetdp.ipam import plugin as cni_ipam
from vnetdp.ipam.store import CNI, DOCKER, Allocation, Store


@pytest.fixture
def plugin(tmp_path):
    with plugin_on(tmp_path) as p:
        yield p


def cni_conf(state_dir, network: str = "k8s") -> dict:
    """A CNI config whose vnetdp-ipam reads the same (static) source as the Docker plugin."""
    return {"cniVersion": "1.1.0", "name": network, "type": "vnetdp",
            "ipam": {"type": "vnetdp-ipam", "stateDir": str(state_dir), **IPAM}}


def cni_add(state_dir, container: str, network: str = "k8s") -> str:
    result = cni_ipam.handle(cni_env("ADD", container), cni_conf(state_dir, network))
    return result["ips"][0]["address"].split("/")[0]


def allocations(state_dir) -> list[Allocation]:
    with Store(str(state_dir)).transaction() as state:
        return list(state.allocations)


def request(p, address: str = "", **options) -> object:
    return p.call("IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": address, "Options": options or None})


# --- pools ---------------------------------------------------------------------------
def test_without_a_subnet_the_nics_subnet_is_picked(plugin):
    assert plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "Pool": "", "SubPool": "",
                                                "Options": {}, "V6": False}) == \
        {"PoolID": POOL_ID, "Pool": SUBNET, "Data": {}}


def test_the_same_subnet_gets_the_same_pool_id(plugin):
    body = {"AddressSpace": "vnetdp", "Pool": SUBNET, "SubPool": "", "Options": {}, "V6": False}
    assert plugin.ok("IpamDriver.RequestPool", body) == plugin.ok("IpamDriver.RequestPool", body)
    assert plugin.ok("IpamDriver.RequestPool", {**body, "Pool": "10.99.7.7/16"})["Pool"] == SUBNET


@pytest.mark.parametrize("body, words", [
    ({"Pool": "172.18.0.0/16"}, ["172.18.0.0/16", "not one of the VM NIC's subnets", SUBNET]),
    ({"Pool": "10.99.1.0/24"}, ["not one of the VM NIC's subnets", SUBNET]),
    ({"Pool": "10.99.0.0/33"}, ["not an IPv4 prefix"]),
    ({"V6": True}, ["no IPv6"]),
    ({"Pool": SUBNET, "SubPool": "10.99.1.0/30"}, ["--ip-range", "not supported"]),
    ({"Options": {"zone": "a", "com.docker.network.ipam.serial": "true"}}, ["unknown IPAM option(s) zone"]),
    ({"AddressSpace": "LocalDefault"}, ["address space 'LocalDefault'", "--ipam-driver vnetdp"]),
])
def test_request_pool_refusals_name_what_is_wrong(plugin, body, words):
    reply = plugin.call("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "Pool": "", "SubPool": "",
                                                   "Options": {}, "V6": False, **body})
    assert not reply.ok and all(w in reply.err for w in words), reply


# --- the gateway ---------------------------------------------------------------------------
def test_the_gateway_is_the_subnets_and_consumes_no_secondary_address(plugin, tmp_path):
    for _ in range(3):   # Docker asks again for every network on the subnet
        assert request(plugin, RequestAddressType="com.docker.network.gateway").body == \
            {"Address": f"{GATEWAY}/16", "Data": {}}
    assert allocations(tmp_path) == []
    assert request(plugin, GATEWAY, RequestAddressType="com.docker.network.gateway").ok
    reply = request(plugin, "10.99.0.254", RequestAddressType="com.docker.network.gateway")
    assert not reply.ok and f"--gateway {GATEWAY}" in reply.err
    assert plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": GATEWAY}) == {}
    assert allocations(tmp_path) == []


# --- addresses ---------------------------------------------------------------------------
def test_an_address_is_a_secondary_as_a_32_owned_by_docker(plugin, tmp_path):
    reply = request(plugin)
    assert reply.ok and reply.body["Address"] == f"{SECONDARIES[0]}/32"
    [alloc] = allocations(tmp_path)
    assert (alloc.address, alloc.owner, alloc.container_id, alloc.network) == (SECONDARIES[0], DOCKER, "", "docker")


def test_ip_gets_exactly_a_free_secondary_address(plugin, tmp_path):
    assert request(plugin, SECONDARIES[2]).body["Address"] == f"{SECONDARIES[2]}/32"
    assert [a.address for a in allocations(tmp_path)] == [SECONDARIES[2]]


def test_ip_of_an_address_in_use_names_its_holder_and_changes_nothing(plugin, tmp_path):
    pod = cni_add(tmp_path, "pod-a")
    docker = request(plugin).body["Address"].split("/")[0]
    before = allocations(tmp_path)
    reply = request(plugin, pod)
    assert reply.status == 500 and f"{pod} is in use by CNI pod pod-a/eth0 (network k8s)" in reply.err
    assert "in use by a container Docker is starting" in request(plugin, docker).err
    assert allocations(tmp_path) == before


@pytest.mark.parametrize("address, words", [
    ("10.99.9.9", ["not a secondary address of the VM's NIC", SUBNET, "it has 4", "add it to the NIC first"]),
    ("10.98.1.1", ["outside the network's subnet"]),
    (GATEWAY, ["is the gateway of"]),
])
def test_ip_of_an_address_that_is_no_secondary_is_refused(plugin, tmp_path, address, words):
    reply = request(plugin, address)
    assert not reply.ok and all(w in reply.err for w in words), reply
    assert allocations(tmp_path) == []


def test_ip_of_an_address_another_endpoint_holds_is_refused(tmp_path):
    plumbing = FakePlumbing(foreign={SECONDARIES[1]: "which the endpoint on ifindex 7 holds"})
    with plugin_on(tmp_path, plumbing) as p:
        reply = request(p, SECONDARIES[1])
    assert "in use on this node: which the endpoint on ifindex 7 holds" in reply.err


def test_exhaustion_says_how_many_the_nic_has_and_to_add_more_leaving_nothing(plugin, tmp_path):
    cni_add(tmp_path, "pod-a")
    cni_add(tmp_path, "pod-b")
    assert request(plugin).ok and request(plugin).ok
    before = allocations(tmp_path)
    reply = request(plugin)
    assert reply.status == 500, reply
    assert (f"no free address in {SUBNET}: the VM's NIC has 4 secondary address(es) there and all are in use "
            "(2 by CNI pods, 2 by Docker containers); add secondary IP addresses to the VM's NIC") in reply.err
    assert allocations(tmp_path) == before
    with pytest.raises(Exception, match="no free address"):   # nor has CNI one
        cni_add(tmp_path, "pod-c")


def test_release_address_is_idempotent_and_frees_only_dockers(plugin, tmp_path):
    docker = request(plugin).body["Address"].split("/")[0]
    pod = cni_add(tmp_path, "pod-a")
    for _ in range(2):
        assert plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": docker}) == {}
    assert plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": pod}) == {}
    assert [(a.address, a.owner) for a in allocations(tmp_path)] == [(pod, CNI)]
    reply = plugin.call("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": "10.98.0.1"})
    assert reply.status == 400 and "outside the pool" in reply.err
    reply = plugin.call("IpamDriver.ReleaseAddress", {"PoolID": "default/172.17.0.0/16", "Address": docker})
    assert reply.status == 400 and "not one of vnetdp's" in reply.err


def test_release_address_leaves_an_address_a_live_endpoint_holds(plugin, tmp_path):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    assert plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": address}) == {}  # a late retry
    assert [a.container_id for a in allocations(tmp_path)] == [endpoint_id]
    remove_container(plugin, network_id, endpoint_id, address)
    assert allocations(tmp_path) == []


def test_release_pool_returns_what_docker_left_once_no_network_uses_the_subnet(plugin, tmp_path):
    network_id = create_network(plugin)
    request(plugin)                                   # a container whose CreateEndpoint never came
    pod = cni_add(tmp_path, "pod-a")
    assert plugin.ok("IpamDriver.ReleasePool", {"PoolID": POOL_ID}) == {}   # the network still uses it
    assert len(allocations(tmp_path)) == 2
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    assert plugin.ok("IpamDriver.ReleasePool", {"PoolID": POOL_ID}) == {}
    assert [a.address for a in allocations(tmp_path)] == [pod]


# --- one store, two owners ----------------------------------------------------------------
def test_cni_gc_and_del_never_release_dockers_addresses(plugin, tmp_path):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    pending = request(plugin).body["Address"].split("/")[0]
    pod = cni_add(tmp_path, "pod-a")
    conf = cni_conf(tmp_path)
    gc = {**conf, "cni.dev/valid-attachments": []}
    cni_ipam.handle(cni_env("GC"), gc)                           # no CNI attachment is valid
    cni_ipam.handle(cni_env("DEL", endpoint_id), conf)           # a CNI DEL naming the endpoint ID
    held = {a.address: a for a in allocations(tmp_path)}
    assert sorted(held) == sorted([address, pending])
    assert held[address].container_id == endpoint_id and held[address].network == f"docker:{network_id}"
    assert pod not in held


def test_a_corrupt_state_rebuilt_by_cni_gc_keeps_dockers_addresses(plugin, tmp_path):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    cni_add(tmp_path, "pod-a")
    with open(os.path.join(tmp_path, "ipam.json"), "w") as f:
        f.write("garbage")
    cni_ipam.handle(cni_env("GC"), {**cni_conf(tmp_path), "cni.dev/valid-attachments": []})
    [alloc] = allocations(tmp_path)
    assert (alloc.address, alloc.owner, alloc.container_id) == (address, DOCKER, endpoint_id)


def test_state_and_leases_without_owners_load_as_cni_and_dockers_carry_theirs(tmp_path):
    old = {"version": 1, "pools": [], "cursor": {}, "refreshed": 0,
           "allocations": [{"container_id": "c1", "ifname": "eth0", "address": "10.99.1.1", "subnet": SUBNET,
                            "gateway": GATEWAY, "time": 1.0, "network": "k8s"}]}
    with open(os.path.join(tmp_path, "ipam.json"), "w") as f:
        json.dump(old, f)
    store = Store(str(tmp_path))
    with store.transaction() as state:
        assert state.allocations[0].owner == CNI
        state.allocations.append(Allocation("", "", "10.99.1.2", SUBNET, GATEWAY, 2.0, "docker", DOCKER))
    with open(store.path) as f:
        written = json.load(f)["allocations"]
    assert "owner" not in written[0] and written[1]["owner"] == DOCKER   # CNI's written as before
    leases = {a.address: a.owner for a in store.leases()}
    assert leases == {"10.99.1.2": DOCKER}


def test_addresses_given_concurrently_are_distinct(plugin):
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: request(plugin), range(6)))
    given = [r.body["Address"] for r in replies if r.ok]
    assert len(given) == 4 and len(set(given)) == 4
    assert sum(1 for r in replies if "no free address" in r.err) == 2


def test_an_endpoint_takes_only_an_address_dockers_ipam_gave(plugin, tmp_path):
    network_id = create_network(plugin)
    pod = cni_add(tmp_path, "pod-a")
    reply = plugin.call("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e1"), f"{pod}/32"))
    assert not reply.ok and "in use by CNI pod pod-a" in reply.err
    reply = plugin.call("NetworkDriver.CreateEndpoint",
                        endpoint_body(network_id, docker_id("e2"), f"{SECONDARIES[3]}/16"))
    assert not reply.ok and "not given out by vnetdp's IPAM driver" in reply.err
