"""The Docker network driver (libnetwork docs/remote.md).

A network is a record: its subnet (one of the NIC's, from vnetdp's IPAM
driver) and what its options ask. An endpoint is a pod record and the same
host-side datapath as a CNI pod's (``plumbing``): CreateEndpoint creates the
veth, host end ``vnd`` + 11 hex digits of (endpoint ID, eth0), container end
``vnp`` + the same digits, still in the node's namespace; Join names that end
for Docker, which moves it into the container, renames it (``eth0``), gives
it the address (a /32), the connected route to 169.254.1.1 and the default
route through it (Join's StaticRoutes and Gateway). The datapath answers the
container's ARP for 169.254.1.1 (any ARP request: ``from_container``
answers with the host end's MAC); once the interface is in the container the
driver adds the permanent neighbour entry a CNI pod has, and with ``nicAttach
xdp`` the pod end's XDP program (``Settler``).

Calls that create or use something (CreateEndpoint, Join, EndpointOperInfo,
ProgramExternalConnectivity) fail on unknown IDs; calls that remove
(DeleteNetwork, DeleteEndpoint, Leave, RevokeExternalConnectivity) succeed
when it is gone already: Docker repeats them, and its cleanup must never
get stuck on the plugin.

A restarted dockerd (20.10) sends no CreateNetwork: it keeps its networks in
its own store and creates only host and null networks again (libnetwork's
controller.go ``New``), and it replays IPAM requests only for drivers that
ask (RequiresRequestReplay, false here). Its networks and endpoints are known
from the records: the endpoints of containers it stopped when it exited were
removed then (Leave, DeleteEndpoint, ReleaseAddress); after a crash it
removes what it finds stale when it starts, with force (Leave and
DeleteEndpoint of a stale sandbox's endpoints, DeleteEndpoint alone for an
endpoint in no sandbox, then ReleaseAddress); with --live-restore it sends
nothing for the containers it keeps, and its later calls for them find their
records.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from vnetdp import endpoint
from vnetdp.datapath.settings import FIELDS, NodeSettingsFile, SettingError
from vnetdp.docker.ipam import ADDRESS_SPACE, IpamDriver
from vnetdp.docker.protocol import BadRequest, Body, PluginError
from vnetdp.docker.records import (IFNAME, IPAM_TYPE, Busy, Endpoints, NetworkRecord, NetworkRecords,
                                   host_ifname, locked, network_tag, peer_ifname)
from vnetdp.network.records import PodRecord

log = logging.getLogger("vnetdp.docker")

POD_GATEWAY = str(endpoint.POD_GATEWAY)   # the container's on-link gateway, as a CNI pod's
ROUTE_CONNECTED = 1           # libnetwork's types.CONNECTED (RouteType)
NODE_OPTIONS = ("localSwitching", "enableSnat")   # node settings a network may ask for
MTU_OPTION = "com.docker.network.driver.mtu"
PREFIX_OPTION = "com.docker.network.container_iface_prefix"
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,9}")


class Plumbing(Protocol):
    """The datapath part of an endpoint (``vnetdp.docker.plumbing``; tests
    give a fake)."""

    def nic_mtu(self) -> int: ...

    def in_use(self, address: ipaddress.IPv4Address) -> str | None:
        """Who else has ``address`` on this node (the node itself, a live
        endpoint whose address came from another IPAM plugin), or None."""

    def add(self, endpoint_id: str, address: ipaddress.IPv4Address, mtu: int | None,
            host_mac: str | None = None, pod_mac: str | None = None) -> tuple[str, str]:
        """The veth (container end in the node's namespace) and the host
        side; (host MAC, container MAC). Undoes itself on failure."""

    def intact(self, endpoint_id: str, address: ipaddress.IPv4Address) -> bool:
        """The host side is as ``add`` left it."""

    def delete(self, endpoint_id: str, address: ipaddress.IPv4Address | None) -> None:
        """Everything of the endpoint gone (fine when it is already)."""

    def settle(self, record: PodRecord) -> bool:
        """Finish the container side once Docker moved the interface; False:
        not there yet."""


def _bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise PluginError(f"option {name} must be true or false, not {value!r}")


def parse_options(generic: dict) -> tuple[dict[str, bool], int, str]:
    """``docker network create -o`` options: (node settings asked, MTU or 0,
    the container interface's name prefix)."""
    known = (*NODE_OPTIONS, MTU_OPTION, PREFIX_OPTION)
    unknown = sorted(k for k in generic if k not in known)
    if unknown:
        raise PluginError(f"unknown option(s) {', '.join(unknown)}: vnetdp networks take "
                          f"{', '.join(known)}")
    asks = {name: _bool(name, generic[name]) for name in NODE_OPTIONS if name in generic}
    mtu = 0
    if MTU_OPTION in generic:
        try:
            mtu = int(str(generic[MTU_OPTION]))
        except ValueError:
            mtu = -1
        if not 68 <= mtu <= 65535:
            raise PluginError(f"option {MTU_OPTION} must be an MTU (68-65535), not {generic[MTU_OPTION]!r}")
    prefix = str(generic.get(PREFIX_OPTION) or "eth")
    if not _PREFIX.fullmatch(prefix):
        raise PluginError(f"option {PREFIX_OPTION} must be a short interface name prefix, not {prefix!r}")
    return asks, mtu, prefix


class Settler:
    """Finishes endpoints' container side (``Plumbing.settle``) once Docker
    has moved the interface into the container, which happens after Join
    answers: tried every ``every_s`` for ``wait_s`` in a thread of its own,
    and again for every joined endpoint when the plugin starts."""

    def __init__(self, plumbing: Plumbing, endpoints: Endpoints, wait_s: float = 30.0,
                 every_s: float = 0.05) -> None:
        self.plumbing, self.endpoints = plumbing, endpoints
        self.wait_s, self.every_s = wait_s, every_s
        self.running: set[str] = set()
        self.lock = threading.Lock()
        self.settling = threading.Lock()   # one endpoint at a time: its thread and ProgramExternalConnectivity

    def now(self, endpoint_id: str) -> bool:
        with self.settling:
            record = self.endpoints.get(endpoint_id)
            if record is None or not record.netns:
                return True
            return self.plumbing.settle(record)

    def start(self, endpoint_id: str) -> None:
        with self.lock:
            if endpoint_id in self.running:
                return
            self.running.add(endpoint_id)
        threading.Thread(target=self._run, args=(endpoint_id,), name=f"settle-{endpoint_id[:12]}",
                         daemon=True).start()

    def _run(self, endpoint_id: str) -> None:
        deadline = time.monotonic() + self.wait_s
        try:
            while True:
                try:
                    if self.now(endpoint_id):
                        return
                except Exception:
                    log.exception("endpoint %s: finishing the container side failed", endpoint_id[:12])
                if time.monotonic() > deadline:
                    log.warning("endpoint %s: its interface did not appear in the container within %g s",
                                endpoint_id[:12], self.wait_s)
                    return
                time.sleep(self.every_s)
        finally:
            with self.lock:
                self.running.discard(endpoint_id)

    def resume(self) -> None:
        for record in self.endpoints.all():
            if record.netns:
                self.start(record.container_id)


class NetworkDriver:
    def __init__(self, state_dir: str, plumbing: Plumbing, ipam: IpamDriver,
                 settler: Settler | None = None) -> None:
        self.state_dir, self.plumbing, self.ipam = state_dir, plumbing, ipam
        self.networks = NetworkRecords(state_dir)
        self.endpoints = Endpoints(state_dir)
        self.settler = settler or Settler(plumbing, self.endpoints)

    # --- helpers ----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, *names: str, shared: tuple[str, ...] = ()) -> Iterator[None]:
        try:
            with locked(self.state_dir, *names, shared=shared):
                yield
        except Busy as e:
            raise PluginError(str(e)) from e
        except OSError as e:
            raise PluginError(f"cannot lock or write in the state directory {self.state_dir}: {e}") from e

    def _network(self, network_id: str) -> NetworkRecord:
        network = self.networks.get(network_id)
        if network is None:
            raise PluginError(f"network {network_id[:12]} is not a vnetdp network on this node "
                              "(create it with docker network create --driver vnetdp --ipam-driver vnetdp)")
        return network

    def _endpoint(self, network_id: str, endpoint_id: str, missing_ok: bool = False) -> PodRecord | None:
        record = self.endpoints.get(endpoint_id)
        if record is None:
            if missing_ok:
                return None
            raise PluginError(f"endpoint {endpoint_id[:12]} does not exist on this node")
        if record.network != network_tag(network_id):
            raise BadRequest(f"endpoint {endpoint_id[:12]} belongs to network "
                             f"{record.network.removeprefix('docker:')[:12]}, not {network_id[:12]}")
        return record

    def _check_node(self, asks: dict[str, bool]) -> None:
        """What the network asks must be what the node has: node settings
        belong to the node (as for CNI configs)."""
        try:
            node = NodeSettingsFile(self.state_dir).load()
        except SettingError as e:
            raise PluginError(f"node settings: {e} (correct them with 'vnetdp node set')")
        wrong = {name: value for name, value in asks.items() if node[FIELDS[name].attribute] != value}
        if wrong:
            said = "; ".join(f"the network asks {n}={json.dumps(v)} but this node has {n}="
                             f"{json.dumps(node[FIELDS[n].attribute])}" for n, v in wrong.items())
            sets = " ".join(f"{n}={json.dumps(v)}" for n, v in wrong.items())
            raise PluginError(f"{said}: node settings belong to the node; change them with 'vnetdp node set "
                              f"{sets}' ('vnetdp node show' lists them) or leave -o {', -o '.join(wrong)} out")

    # --- networks ---------------------------------------------------------------
    def capabilities(self, body: Body) -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def create_network(self, body: Body) -> dict:
        network_id = body.ident("NetworkID")
        options = body.mapping("Options")
        v4, v6 = body.objects("IPv4Data"), body.objects("IPv6Data")
        if v6 or options.get("com.docker.network.enable_ipv6") is True:
            raise PluginError("vnetdp has no IPv6: create the network without --ipv6")
        if options.get("com.docker.network.internal") is True:
            raise PluginError("--internal is not supported: containers on vnetdp networks are on the VNet")
        generic = options.get("com.docker.network.generic") or {}
        if not isinstance(generic, dict):
            raise BadRequest("CreateNetwork: Options.com.docker.network.generic must be an object")
        asks, mtu, prefix = parse_options(generic)
        if len(v4) != 1:
            raise PluginError(f"a vnetdp network has one IPv4 subnet, not {len(v4)}")
        data = Body("CreateNetwork", v4[0])
        if data.text("AddressSpace") != ADDRESS_SPACE:
            raise PluginError("the network's addresses must come from vnetdp's IPAM driver: "
                              "docker network create --driver vnetdp --ipam-driver vnetdp ...")
        if data.mapping("AuxAddresses"):
            raise PluginError("--aux-address is not supported: every secondary address of the NIC is "
                              "a container's")
        pool = self.ipam.nic_subnet(data.text("Pool", required=True))
        gateway = data.text("Gateway")
        if gateway and gateway.split("/")[0] != pool["gateway"]:
            raise PluginError(f"the gateway of {pool['subnet']} is {pool['gateway']}, not {gateway}")
        record = NetworkRecord(network_id, pool["subnet"], gateway or pool["gateway"], asks, mtu, prefix,
                               time.time())
        with self._locked(f"net-{network_id}"):
            existing = self.networks.get(network_id)
            if existing is not None:   # a repeated call (a restarted dockerd sends none: module doc)
                differences = existing.differences(record)
                if differences:
                    raise PluginError(f"network {network_id[:12]} exists with other parameters: "
                                      + "; ".join(differences))
                return {}
            self._check_node(asks)
            if mtu and mtu > self.plumbing.nic_mtu():
                raise PluginError(f"option {MTU_OPTION}={mtu} is above the NIC's MTU "
                                  f"{self.plumbing.nic_mtu()}")
            self.networks.save(record)
        log.info("CreateNetwork %s: %s%s", network_id[:12], record.subnet,
                 f" asking {asks}" if asks else "")
        return {}

    def delete_network(self, body: Body) -> dict:
        network_id = body.ident("NetworkID")
        with self._locked(f"net-{network_id}"):
            if self.networks.get(network_id) is None:
                return {}
            for record in self.endpoints.of_network(network_id):  # Docker removed them without telling us
                log.warning("DeleteNetwork %s: removing endpoint %s left behind", network_id[:12],
                            record.container_id[:12])
                with self._locked(f"ep-{record.container_id}"):
                    self.plumbing.delete(record.container_id, ipaddress.IPv4Address(record.address))
                    self.endpoints.remove(record.container_id)
            self.networks.remove(network_id)
        log.info("DeleteNetwork %s", network_id[:12])
        return {}

    # --- endpoints --------------------------------------------------------------
    def _plumb(self, record: PodRecord, network: NetworkRecord, mac: str | None) -> PodRecord:
        """The endpoint's datapath for a saved record (a repair keeps its MACs)."""
        address = ipaddress.IPv4Address(record.address)
        if record.pod_mac:
            self.plumbing.delete(record.container_id, address)
            macs = (record.host_mac, record.pod_mac)
        else:
            macs = (None, mac)
        host_mac, pod_mac = self.plumbing.add(record.container_id, address, network.mtu or None, *macs)
        done = dataclasses.replace(record, host_mac=host_mac, pod_mac=pod_mac)
        self.endpoints.save(done)
        return done

    def create_endpoint(self, body: Body) -> dict:
        network_id, endpoint_id = body.ident("NetworkID"), body.ident("EndpointID")
        network = self._network(network_id)
        iface = Body("CreateEndpoint", body.mapping("Interface"))
        given = iface.text("Address")
        if not given:
            raise PluginError("CreateEndpoint without an IPv4 address: the network must use vnetdp's IPAM "
                              "driver (--ipam-driver vnetdp)")
        try:
            address = ipaddress.IPv4Interface(given).ip
        except ValueError:
            raise BadRequest(f"CreateEndpoint: Interface.Address {given!r} is not an IPv4 address/prefix")
        if address not in ipaddress.IPv4Network(network.subnet):
            raise BadRequest(f"{address} is outside the network's subnet {network.subnet}")
        if iface.text("AddressIPv6"):
            raise PluginError("vnetdp has no IPv6")
        mac = iface.text("MacAddress").lower() or None
        if mac and (not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1):
            raise BadRequest(f"CreateEndpoint: MacAddress {mac!r} is not a unicast MAC address")
        self._check_node(network.asks)
        with self._locked(f"ep-{endpoint_id}", shared=(f"net-{network_id}",)):
            record = self.endpoints.get(endpoint_id)
            if record is not None:
                if record.network != network_tag(network_id) or record.address != str(address):
                    raise PluginError(f"endpoint {endpoint_id[:12]} exists with {record.address} on network "
                                      f"{record.network.removeprefix('docker:')[:12]}")
                if record.pod_mac and mac in (None, record.pod_mac) and self.plumbing.intact(endpoint_id, address):
                    return self._endpoint_reply(record, mac)
                log.warning("CreateEndpoint %s again: repairing it", endpoint_id[:12])
            else:
                self.ipam.claim(address, endpoint_id, network_id)
                record = PodRecord(endpoint_id, IFNAME, "", str(address), IPAM_TYPE, network.subnet,
                                   network.gateway.split("/")[0], network=network_tag(network_id))
            try:
                self.endpoints.save(record)
                record = self._plumb(record, network, mac)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    self.plumbing.delete(endpoint_id, address)
                self.endpoints.remove(endpoint_id)
                self.ipam.unclaim(address, endpoint_id)
                if isinstance(e, PluginError):
                    raise
                raise PluginError(f"endpoint setup failed and was rolled back: {e}") from e
        log.info("CreateEndpoint %s: %s on %s", endpoint_id[:12], address, host_ifname(endpoint_id))
        return self._endpoint_reply(record, mac)

    @staticmethod
    def _endpoint_reply(record: PodRecord, mac: str | None) -> dict:
        # Docker keeps its address; it learns the container end's MAC (libnetwork
        # sets a driver's MAC when it had none: drivers/remote CreateEndpoint).
        return {"Interface": {} if mac else {"MacAddress": record.pod_mac}}

    def delete_endpoint(self, body: Body) -> dict:
        network_id, endpoint_id = body.ident("NetworkID"), body.ident("EndpointID")
        with self._locked(f"ep-{endpoint_id}", shared=(f"net-{network_id}",)):
            record = self._endpoint(network_id, endpoint_id, missing_ok=True)
            address = ipaddress.IPv4Address(record.address) if record else None
            self.plumbing.delete(endpoint_id, address)   # also a leftover no record explains
            self.endpoints.remove(endpoint_id)
        log.info("DeleteEndpoint %s%s", endpoint_id[:12], f": {address}" if address else " (gone already)")
        return {}

    def endpoint_info(self, body: Body) -> dict:
        record = self._endpoint(body.ident("NetworkID"), body.ident("EndpointID"))
        return {"Value": {"hostInterface": host_ifname(record.container_id), "address": record.address,
                          "macAddress": record.pod_mac, "hostMacAddress": record.host_mac}}

    def join(self, body: Body) -> dict:
        network_id, endpoint_id = body.ident("NetworkID"), body.ident("EndpointID")
        sandbox = body.text("SandboxKey", required=True)
        body.mapping("Options")
        network = self._network(network_id)
        with self._locked(f"ep-{endpoint_id}", shared=(f"net-{network_id}",)):
            record = self._endpoint(network_id, endpoint_id)
            if not self.plumbing.intact(endpoint_id, ipaddress.IPv4Address(record.address)):
                log.warning("Join %s: the endpoint's datapath is not intact: repairing it", endpoint_id[:12])
                try:
                    record = self._plumb(record, network, None)
                except Exception as e:
                    raise PluginError(f"the endpoint's datapath is broken and cannot be repaired: {e}") from e
            record = dataclasses.replace(record, netns=sandbox)
            self.endpoints.save(record)
        self.settler.start(endpoint_id)
        log.info("Join %s: %s into %s", endpoint_id[:12], peer_ifname(endpoint_id), sandbox)
        return {"InterfaceName": {"SrcName": peer_ifname(endpoint_id), "DstPrefix": network.iface_prefix},
                "Gateway": POD_GATEWAY,
                "StaticRoutes": [{"Destination": f"{POD_GATEWAY}/32", "RouteType": ROUTE_CONNECTED,
                                  "NextHop": ""}],
                "DisableGatewayService": True}

    def leave(self, body: Body) -> dict:
        network_id, endpoint_id = body.ident("NetworkID"), body.ident("EndpointID")
        with self._locked(f"ep-{endpoint_id}", shared=(f"net-{network_id}",)):
            record = self._endpoint(network_id, endpoint_id, missing_ok=True)
            if record is not None and record.netns:
                self.endpoints.save(dataclasses.replace(record, netns=""))
        return {}

    def program_external(self, body: Body) -> dict:
        """SNAT and the VNet are the datapath's: nothing to program. The
        container's interface is in place by now (libnetwork calls this after
        populating the sandbox): finish its side here if the settler has not."""
        record = self._endpoint(body.ident("NetworkID"), body.ident("EndpointID"))
        body.mapping("Options")
        if not self.settler.now(record.container_id):
            self.settler.start(record.container_id)
        return {}

    def revoke_external(self, body: Body) -> dict:
        body.ident("NetworkID"), body.ident("EndpointID")
        return {}

    def discover(self, body: Body) -> dict:
        return {}
