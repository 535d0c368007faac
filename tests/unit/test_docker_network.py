"""The Docker network driver over a real unix socket with a fake datapath:
the calls Docker 20.10 makes for `docker network create` and `docker run`
(REAL-CLIENTS.md), in order, and back; options asked of the node; repeated
calls; unknown IDs; a failing datapath rolled back; a plugin killed and
started again on the same state."""
from __future__ import annotations

import ipaddress
import json
import time

import pytest

from docker_fakes import (GATEWAY, POOL_ID, SANDBOX, SECONDARIES, SUBNET, FakePlumbing, create_network, docker_id,
                          endpoint_body, ids, network_body, plugin_on, remove_container, remove_network,
                          run_container)
from vnetdp import naming
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.docker.records import Endpoints, NetworkRecords
from vnetdp.ipam.store import DOCKER, Store
from vnetdp.network.records import PodRecords


@pytest.fixture
def plumbing() -> FakePlumbing:
    return FakePlumbing()


@pytest.fixture
def plugin(tmp_path, plumbing):
    with plugin_on(tmp_path, plumbing) as p:
        yield p


def allocations(state_dir) -> list:
    with Store(str(state_dir)).transaction() as state:
        return list(state.allocations)


def activate(p) -> None:
    """What dockerd sends first, with empty bodies."""
    p.ok("Plugin.Activate")
    p.ok("NetworkDriver.GetCapabilities")
    p.ok("IpamDriver.GetCapabilities")
    p.ok("IpamDriver.GetDefaultAddressSpaces")


# --- the whole life of a network and a container ---------------------------------------------
def test_docker_run_on_a_vnetdp_network_and_back(plugin, plumbing, tmp_path):
    activate(plugin)
    network_id = create_network(plugin)
    assert NetworkRecords(str(tmp_path)).get(network_id).subnet == SUBNET
    endpoint_id = docker_id("ep-c1")
    address = plugin.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": None})["Address"]
    assert address == f"{SECONDARIES[0]}/32"
    created = plugin.ok("NetworkDriver.CreateEndpoint", endpoint_body(network_id, endpoint_id, address))
    host_mac, pod_mac = plumbing.links[endpoint_id][1:3]
    assert created == {"Interface": {"MacAddress": pod_mac}}      # Docker keeps its address, learns the MAC
    joined = plugin.ok("NetworkDriver.Join", {**ids(network_id, endpoint_id), "SandboxKey": SANDBOX,
                                             "Options": {"com.docker.network.endpoint.exposedports": []}})
    peer = "vnp" + naming.attachment_hash(endpoint_id, "eth0")[:11]
    assert joined == {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"}, "Gateway": "169.254.1.1",
                      "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1, "NextHop": ""}],
                      "DisableGatewayService": True}
    plugin.ok("NetworkDriver.ProgramExternalConnectivity", {**ids(network_id, endpoint_id), "Options": {}})
    assert plugin.ok("NetworkDriver.EndpointOperInfo", ids(network_id, endpoint_id)) == {"Value": {
        "hostInterface": naming.host_ifname(endpoint_id, "eth0"), "address": SECONDARIES[0],
        "macAddress": pod_mac, "hostMacAddress": host_mac}}
    # what the node holds: one owner per address, the endpoint's record beside CNI's pod records
    [alloc] = allocations(tmp_path)
    assert (alloc.address, alloc.owner, alloc.container_id, alloc.ifname, alloc.network) == \
        (SECONDARIES[0], DOCKER, endpoint_id, "eth0", f"docker:{network_id}")
    record = PodRecords(str(tmp_path)).get(endpoint_id, "eth0")
    assert (record.address, record.netns, record.network, record.ipam_type, record.pod_mac) == \
        (SECONDARIES[0], SANDBOX, f"docker:{network_id}", "vnetdp-docker", pod_mac)
    assert endpoint_id in plumbing.settled
    remove_container(plugin, network_id, endpoint_id, SECONDARIES[0])
    assert plumbing.links == {} and allocations(tmp_path) == [] and PodRecords(str(tmp_path)).all() == []
    remove_network(plugin, network_id)
    assert NetworkRecords(str(tmp_path)).all() == [] and allocations(tmp_path) == []


def test_a_mac_docker_was_given_is_the_containers(plugin, plumbing):
    network_id = create_network(plugin)
    endpoint_id, _ = run_container(plugin, network_id, "c1", mac="02:42:0a:63:01:09")
    assert plumbing.links[endpoint_id][2] == "02:42:0a:63:01:09"
    reply = plugin.call("NetworkDriver.CreateEndpoint", endpoint_body(network_id, endpoint_id,
                                                                       f"{SECONDARIES[0]}/32", "02:42:0a:63:01:09"))
    assert reply.body == {"Interface": {}}   # Docker gave a MAC: an empty Interface, as the protocol asks


def test_two_containers_get_distinct_addresses_and_ip_its_own(plugin, plumbing):
    network_id = create_network(plugin)
    _, a = run_container(plugin, network_id, "c1")
    _, b = run_container(plugin, network_id, "c2", ip=SECONDARIES[3])
    assert (a, b) == (SECONDARIES[0], SECONDARIES[3])
    assert len(plumbing.links) == 2


# --- options: node settings are the node's ------------------------------------------------------
@pytest.mark.parametrize("generic, words", [
    ({"localSwitching": "false"}, ["the network asks localSwitching=false but this node has localSwitching=true",
                                   "vnetdp node set localSwitching=false"]),
    ({"enableSnat": "False"}, ["enableSnat=false", "vnetdp node set enableSnat=false"]),
    ({"mode": "bridge", "vlan": "5"}, ["unknown option(s) mode, vlan"]),
    ({"enableSnat": "maybe"}, ["enableSnat must be true or false"]),
    ({"com.docker.network.driver.mtu": "9001"}, ["above the NIC's MTU 1500"]),
    ({"com.docker.network.driver.mtu": "big"}, ["must be an MTU"]),
    ({"com.docker.network.container_iface_prefix": "Eth-0!"}, ["interface name prefix"]),
])
def test_options_the_node_contradicts_or_unknown_ones_are_refused(plugin, tmp_path, generic, words):
    reply = plugin.call("NetworkDriver.CreateNetwork", network_body(docker_id("n"), generic=generic))
    assert not reply.ok and all(w in reply.err for w in words), reply
    assert NetworkRecords(str(tmp_path)).all() == []


def test_options_the_node_has_are_accepted(plugin, plumbing, tmp_path):
    NodeSettingsFile(str(tmp_path)).update({"localSwitching": False})
    generic = {"localSwitching": "false", "enableSnat": "true", "com.docker.network.driver.mtu": "1400",
               "com.docker.network.container_iface_prefix": "vnet"}
    network_id = create_network(plugin, generic=generic)
    record = NetworkRecords(str(tmp_path)).get(network_id)
    assert (record.asks, record.mtu, record.iface_prefix) == ({"localSwitching": False, "enableSnat": True},
                                                              1400, "vnet")
    endpoint_id, _ = run_container(plugin, network_id, "c1")
    assert plumbing.links[endpoint_id][3] == 1400
    joined = plugin.ok("NetworkDriver.Join", {**ids(network_id, endpoint_id), "SandboxKey": SANDBOX})
    assert joined["InterfaceName"]["DstPrefix"] == "vnet"
    # the node changes: new endpoints of the network are refused, as CNI ADDs would be
    NodeSettingsFile(str(tmp_path)).update({"localSwitching": True})
    address = plugin.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": None})["Address"]
    reply = plugin.call("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e2"), address))
    assert not reply.ok and "vnetdp node set localSwitching=false" in reply.err


@pytest.mark.parametrize("change, words", [
    (lambda b: b["Options"].update({"com.docker.network.enable_ipv6": True}), ["no IPv6"]),
    (lambda b: b.update(IPv6Data=[{"AddressSpace": "vnetdp", "Pool": "fd00::/64"}]), ["no IPv6"]),
    (lambda b: b["Options"].update({"com.docker.network.internal": True}), ["--internal"]),
    (lambda b: b["IPv4Data"][0].update(AddressSpace="LocalDefault"), ["--ipam-driver vnetdp"]),
    (lambda b: b["IPv4Data"][0].update(Pool="172.18.0.0/16"), ["not one of the VM NIC's subnets"]),
    (lambda b: b["IPv4Data"][0].update(Gateway="10.99.0.254/16"), [f"the gateway of {SUBNET} is {GATEWAY}"]),
    (lambda b: b["IPv4Data"][0].update(AuxAddresses={"router": "10.99.1.4"}), ["--aux-address"]),
    (lambda b: b["IPv4Data"].append(dict(b["IPv4Data"][0])), ["one IPv4 subnet"]),
    (lambda b: b["Options"].update({"com.docker.network.generic": "x"}), ["must be an object"]),
])
def test_networks_vnetdp_cannot_carry_are_refused(plugin, tmp_path, change, words):
    body = network_body(docker_id("n"))
    change(body)
    reply = plugin.call("NetworkDriver.CreateNetwork", body)
    assert not reply.ok and all(w in reply.err for w in words), reply
    assert NetworkRecords(str(tmp_path)).all() == []


# --- repeated calls ---------------------------------------------------------------------------
def test_a_repeated_create_network_is_accepted_a_different_one_refused(plugin):
    network_id = create_network(plugin)
    plugin.ok("NetworkDriver.CreateNetwork", network_body(network_id))          # a retry
    reply = plugin.call("NetworkDriver.CreateNetwork", network_body(network_id, generic={"enableSnat": "true"}))
    assert not reply.ok and "exists with other parameters: asks {}" in reply.err


def test_repeated_calls_are_idempotent(plugin, plumbing, tmp_path):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    body = endpoint_body(network_id, endpoint_id, f"{address}/32")
    first = plugin.ok("NetworkDriver.CreateEndpoint", body)
    assert plugin.ok("NetworkDriver.CreateEndpoint", body) == first and plumbing.adds() == 1
    join = {**ids(network_id, endpoint_id), "SandboxKey": SANDBOX, "Options": {}}
    assert plugin.ok("NetworkDriver.Join", join) == plugin.ok("NetworkDriver.Join", join)
    assert plumbing.adds() == 1
    for _ in range(2):
        remove_container(plugin, network_id, endpoint_id, address)
    for _ in range(2):
        remove_network(plugin, network_id)
    assert plumbing.links == {} and allocations(tmp_path) == [] and NetworkRecords(str(tmp_path)).all() == []


def test_a_broken_endpoint_is_repaired_with_its_macs(plugin, plumbing):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    macs = plumbing.links.pop(endpoint_id)[1:3]          # its veth vanished
    plugin.ok("NetworkDriver.Join", {**ids(network_id, endpoint_id), "SandboxKey": SANDBOX})
    assert plumbing.links[endpoint_id][1:3] == macs
    assert plumbing.calls[-1][-2:] == macs


# --- bad requests change nothing ------------------------------------------------------------------
def test_unknown_ids_are_refused_where_something_is_used(plugin, tmp_path):
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    other = docker_id("nope")
    before = (allocations(tmp_path), PodRecords(str(tmp_path)).all())
    cases = [
        ("NetworkDriver.CreateEndpoint", endpoint_body(other, docker_id("e9"), f"{SECONDARIES[1]}/32"),
         "is not a vnetdp network"),
        ("NetworkDriver.Join", {**ids(network_id, other), "SandboxKey": SANDBOX}, "does not exist"),
        ("NetworkDriver.EndpointOperInfo", ids(network_id, other), "does not exist"),
        ("NetworkDriver.ProgramExternalConnectivity", ids(network_id, other), "does not exist"),
        ("NetworkDriver.Join", {**ids(other, endpoint_id), "SandboxKey": SANDBOX}, "is not a vnetdp network"),
        ("NetworkDriver.EndpointOperInfo", ids(other, endpoint_id), "belongs to network"),
        ("NetworkDriver.DeleteEndpoint", ids(other, endpoint_id), "belongs to network"),
        ("NetworkDriver.Join", ids(network_id, endpoint_id), "SandboxKey is missing"),
        ("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e9"), "10.98.0.1/32"),
         "outside the network's subnet"),
        ("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e9"), "ten/32"),
         "not an IPv4 address"),
        ("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e9"), ""), "without an IPv4 address"),
        ("NetworkDriver.CreateEndpoint", endpoint_body(network_id, docker_id("e9"), f"{SECONDARIES[1]}/32",
                                                       "01:00:5e:00:00:01"), "not a unicast MAC"),
        ("NetworkDriver.CreateEndpoint", endpoint_body(network_id, endpoint_id, f"{SECONDARIES[1]}/32"),
         "exists with"),
    ]
    for method, body, words in cases:
        reply = plugin.call(method, body)
        assert not reply.ok and words in reply.err, (method, reply)
    assert (allocations(tmp_path), PodRecords(str(tmp_path)).all()) == before


def test_removing_what_is_gone_succeeds(plugin, plumbing):
    other = docker_id("gone")
    for method in ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "NetworkDriver.RevokeExternalConnectivity"):
        assert plugin.ok(method, ids(other, docker_id("gone-ep"))) == {}
    assert plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": other}) == {}


# --- failures roll back ------------------------------------------------------------------------
def test_a_failing_datapath_is_rolled_back_and_docker_releases_the_address(plugin, plumbing, tmp_path):
    network_id = create_network(plugin)
    address = plugin.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": None})["Address"]
    plumbing.fail_add = "netlink said no"
    endpoint_id = docker_id("e1")
    reply = plugin.call("NetworkDriver.CreateEndpoint", endpoint_body(network_id, endpoint_id, address))
    assert reply.status == 500 and "endpoint setup failed and was rolled back: netlink said no" in reply.err
    assert plumbing.links == {} and Endpoints(str(tmp_path)).all() == []
    [alloc] = allocations(tmp_path)
    assert (alloc.container_id, alloc.network) == ("", "docker")   # Docker's again, for it to release
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": address.split("/")[0]})
    assert allocations(tmp_path) == []


# --- state outlives the plugin ------------------------------------------------------------------
def test_a_killed_plugin_started_again_carries_on(tmp_path, plumbing):
    with plugin_on(tmp_path, plumbing) as first:
        network_id = create_network(first)
        endpoint_id, address = run_container(first, network_id, "c1")
        first.server.socket.close()   # gone without a word (its records, store and maps stay)
    with plugin_on(tmp_path, plumbing) as second:   # knows the network from its record: no CreateNetwork
        other, b = run_container(second, network_id, "c2")
        assert b != address
        remove_container(second, network_id, endpoint_id, address)
        remove_container(second, network_id, other, b)
        remove_network(second, network_id)
    assert plumbing.links == {} and allocations(tmp_path) == [] and PodRecords(str(tmp_path)).all() == []


def test_a_dockerd_started_after_a_crash_cleans_up_and_its_network_carries_on(plugin, plumbing, tmp_path):
    """What Docker 20.10 sends when it starts again after a crash (module doc
    of vnetdp.docker.network): no CreateNetwork for the network it kept, the
    activation, its stale sandbox's endpoint removed with force (Leave,
    DeleteEndpoint, ReleaseAddress), an endpoint in no sandbox (DeleteEndpoint
    and ReleaseAddress, no Leave); then the container again, on a new
    endpoint of the network."""
    network_id = create_network(plugin)
    joined, a = run_container(plugin, network_id, "c1")
    b = plugin.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": None})["Address"]
    unjoined = docker_id("ep-c2")
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint_body(network_id, unjoined, b))
    activate(plugin)
    plugin.ok("NetworkDriver.Leave", ids(network_id, joined))
    plugin.ok("NetworkDriver.DeleteEndpoint", ids(network_id, joined))
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": a})
    plugin.ok("NetworkDriver.DeleteEndpoint", ids(network_id, unjoined))
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": b.split("/")[0]})
    assert plumbing.links == {} and allocations(tmp_path) == [] and PodRecords(str(tmp_path)).all() == []
    again, c = run_container(plugin, network_id, "c1-again")
    assert list(plumbing.links) == [again]
    assert [(x.address, x.container_id) for x in allocations(tmp_path)] == [(c, again)]
    remove_container(plugin, network_id, again, c)
    remove_network(plugin, network_id)
    assert plumbing.links == {} and allocations(tmp_path) == [] and NetworkRecords(str(tmp_path)).all() == []


def test_a_started_plugin_finishes_joined_endpoints(tmp_path, plumbing):
    with plugin_on(tmp_path, plumbing) as p:
        network_id = create_network(p)
        endpoint_id, _ = run_container(p, network_id, "c1")
        plumbing.settled.clear()
        p.network.settler.resume()
        deadline = time.monotonic() + 5
        while endpoint_id not in plumbing.settled and time.monotonic() < deadline:
            time.sleep(0.01)
    assert endpoint_id in plumbing.settled


def test_delete_network_removes_endpoints_docker_forgot(plugin, plumbing, tmp_path):
    network_id = create_network(plugin)
    run_container(plugin, network_id, "c1")
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": POOL_ID})
    assert plumbing.links == {} and allocations(tmp_path) == [] and PodRecords(str(tmp_path)).all() == []


def test_records_are_what_other_tools_read(plugin, tmp_path):
    """The endpoint is a pod record CNI GC keeps a veth for (it names no CNI
    network, so GC never deletes it); the network record is plain JSON."""
    network_id = create_network(plugin)
    endpoint_id, address = run_container(plugin, network_id, "c1")
    [record] = PodRecords(str(tmp_path)).all()
    assert naming.host_ifname(record.container_id, record.ifname) == naming.host_ifname(endpoint_id, "eth0")
    assert record.network.startswith("docker:") and ipaddress.IPv4Address(record.address)
    with open(tmp_path / "docker" / "networks" / f"{network_id}.json") as f:
        saved = json.load(f)
    assert saved["subnet"] == SUBNET and saved["gateway"] == f"{GATEWAY}/16"
