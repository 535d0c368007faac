"""What the Docker driver's unit tests share: the plugin served on a real
unix socket in a thread, over a state directory with a static IPAM source,
and a fake datapath (the network driver's plumbing) that records calls.

Imported as a plain module (``import docker_fakes``), like helpers.py."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from vnetdp.docker import protocol
from vnetdp.docker.network import Settler
from vnetdp.docker.plugin import drivers, routes
from vnetdp.docker.records import Endpoints

SUBNET = "10.99.0.0/16"
GATEWAY = "10.99.0.1"
SECONDARIES = [f"10.99.1.{i}" for i in range(1, 5)]   # the NIC's secondary addresses here
IPAM = {"environment": "static",
        "ranges": [[{"subnet": SUBNET, "rangeStart": SECONDARIES[0], "rangeEnd": SECONDARIES[-1],
                     "gateway": GATEWAY}]]}
POOL_ID = f"vnetdp:{SUBNET}"
SANDBOX = "/var/run/docker/netns/0123456789ab"


def docker_id(name: str) -> str:
    """A 64-hex ID as Docker makes them."""
    return hashlib.sha256(name.encode()).hexdigest()


def fake_mac(name: str, n: int) -> str:
    digest = hashlib.sha256(f"{name}{n}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass
class FakePlumbing:
    """The datapath part, in memory: endpoint ID -> (address, host MAC, pod MAC, MTU)."""

    links: dict[str, tuple[str, str, str, int | None]] = field(default_factory=dict)
    calls: list[tuple] = field(default_factory=list)
    foreign: dict[str, str] = field(default_factory=dict)   # address -> who else holds it
    settled: list[str] = field(default_factory=list)
    fail_add: str = ""
    mtu: int = 1500

    def nic_mtu(self) -> int:
        return self.mtu

    def in_use(self, address) -> str | None:
        return self.foreign.get(str(address))

    def add(self, endpoint_id, address, mtu, host_mac=None, pod_mac=None):
        self.calls.append(("add", endpoint_id, str(address), mtu, host_mac, pod_mac))
        if self.fail_add:
            raise RuntimeError(self.fail_add)
        host_mac, pod_mac = host_mac or fake_mac(endpoint_id, 1), pod_mac or fake_mac(endpoint_id, 2)
        self.links[endpoint_id] = (str(address), host_mac, pod_mac, mtu)
        return host_mac, pod_mac

    def intact(self, endpoint_id, address) -> bool:
        return self.links.get(endpoint_id, ("",))[0] == str(address)

    def delete(self, endpoint_id, address) -> None:
        self.calls.append(("delete", endpoint_id, str(address) if address else None))
        self.links.pop(endpoint_id, None)

    def settle(self, record) -> bool:
        self.settled.append(record.container_id)
        return True

    def adds(self) -> int:
        return sum(1 for c in self.calls if c[0] == "add")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("plugin", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


@dataclass
class Reply:
    status: int
    body: dict
    content_type: str

    @property
    def ok(self) -> bool:
        return self.status == 200 and "Err" not in self.body

    @property
    def err(self) -> str:
        return self.body.get("Err", "")


class Client:
    """Calls as Docker's plugin client makes them, on the socket at ``socket``."""

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path

    def raw(self, path: str, body: bytes = b"", verb: str = "POST", headers: dict | None = None) -> Reply:
        conn = _UnixConnection(self.socket)
        try:
            conn.request(verb, path, body=body, headers={
                "Accept": "application/vnd.docker.plugins.v1.2+json", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, json.loads(data) if data else {}, resp.getheader("Content-Type", ""))
        finally:
            conn.close()

    def call(self, method: str, body: dict | None = None) -> Reply:
        """A JSON body with a trailing newline (Go's json.Encoder), or none
        for argument-less methods."""
        return self.raw(f"/{method}", b"" if body is None else (json.dumps(body) + "\n").encode())

    def ok(self, method: str, body: dict | None = None) -> dict:
        reply = self.call(method, body)
        assert reply.ok, (method, reply)
        return reply.body


class Plugin(Client):
    """The plugin on a unix socket in a thread, as ``vnetdp docker-plugin`` serves it."""

    def __init__(self, state_dir: str, plumbing: FakePlumbing, ipam: dict | None = None) -> None:
        self.state_dir, self.plumbing = state_dir, plumbing
        self.dir = tempfile.mkdtemp(prefix="vnd-dk-")   # short: a socket path has at most 107 bytes
        super().__init__(f"{self.dir}/vnetdp.sock")
        settler = Settler(plumbing, Endpoints(state_dir), wait_s=2, every_s=0.01)
        self.network, self.ipam = drivers(state_dir, ipam or IPAM, plumbing, settler)
        self.server = protocol.Server(self.socket, routes(self.network, self.ipam))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def plugin_on(state_dir, plumbing: FakePlumbing | None = None, ipam: dict | None = None) -> Iterator[Plugin]:
    p = Plugin(str(state_dir), plumbing or FakePlumbing(), ipam)
    try:
        yield p
    finally:
        p.stop()


# --- Docker's calls for `docker network create` and one `docker run` (REAL-CLIENTS.md) ------------
def create_network(p: Plugin, name: str = "net1", subnet: str = SUBNET, generic: dict | None = None) -> str:
    """RequestPool, the gateway's RequestAddress, CreateNetwork; the network ID."""
    network_id = docker_id(name)
    pool = p.ok("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "Pool": subnet, "SubPool": "",
                                           "Options": {}, "V6": False})
    gateway = p.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                 "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    p.ok("NetworkDriver.CreateNetwork", network_body(network_id, gateway["Address"], pool["Pool"], generic))
    return network_id


def network_body(network_id: str, gateway: str = f"{GATEWAY}/16", pool: str = SUBNET,
                 generic: dict | None = None) -> dict:
    return {"NetworkID": network_id,
            "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": generic or {}},
            "IPv4Data": [{"AddressSpace": "vnetdp", "Gateway": gateway, "Pool": pool}], "IPv6Data": []}


def endpoint_body(network_id: str, endpoint_id: str, address: str, mac: str = "") -> dict:
    return {"NetworkID": network_id, "EndpointID": endpoint_id,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
            "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}}


def ids(network_id: str, endpoint_id: str) -> dict:
    return {"NetworkID": network_id, "EndpointID": endpoint_id}


def run_container(p: Plugin, network_id: str, name: str, ip: str = "", mac: str = "") -> tuple[str, str]:
    """RequestAddress, CreateEndpoint, Join, ProgramExternalConnectivity,
    EndpointOperInfo; (endpoint ID, address)."""
    endpoint_id = docker_id(f"ep-{name}")
    address = p.ok("IpamDriver.RequestAddress", {"PoolID": f"vnetdp:{SUBNET}", "Address": ip,
                                                 "Options": None})["Address"]
    p.ok("NetworkDriver.CreateEndpoint", endpoint_body(network_id, endpoint_id, address, mac))
    p.ok("NetworkDriver.Join", {**ids(network_id, endpoint_id), "SandboxKey": SANDBOX, "Options": {}})
    p.ok("NetworkDriver.ProgramExternalConnectivity", {**ids(network_id, endpoint_id), "Options": {}})
    p.ok("NetworkDriver.EndpointOperInfo", ids(network_id, endpoint_id))
    return endpoint_id, str(ipaddress.IPv4Interface(address).ip)


def remove_container(p: Plugin, network_id: str, endpoint_id: str, address: str) -> None:
    """RevokeExternalConnectivity, Leave, DeleteEndpoint, ReleaseAddress."""
    p.ok("NetworkDriver.RevokeExternalConnectivity", ids(network_id, endpoint_id))
    p.ok("NetworkDriver.Leave", ids(network_id, endpoint_id))
    p.ok("NetworkDriver.DeleteEndpoint", ids(network_id, endpoint_id))
    p.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": address})


def remove_network(p: Plugin, network_id: str) -> None:
    """DeleteNetwork, the gateway's ReleaseAddress, ReleasePool."""
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    p.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": GATEWAY})
    p.ok("IpamDriver.ReleasePool", {"PoolID": POOL_ID})
