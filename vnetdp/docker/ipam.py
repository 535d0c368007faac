"""The Docker IPAM driver (libnetwork docs/ipam.md): the NIC's secondary
addresses, from the node's one IPAM store, which the CNI plugin shares.

- Pools are the NIC's subnets, read from the same source as CNI IPAM (the
  interface document, ``vnetdp.ipam.plugin``: the node's own addresses are
  never handed out), re-read when older than 30 s or when nothing is free.
  ``--subnet`` must be one of them; without it the first is picked. The pool
  ID is ``vnetdp:<subnet>``: the same pool always gets the same ID, and
  RequestPool keeps no reference count (ReleasePool looks at the network
  records instead, see ``release_pool``).
- The gateway request answers the subnet's gateway (the fabric's) and
  allocates nothing: it is not a secondary address.
- An address Docker asks for is allocated with owner ``docker`` and no
  container ID yet (Docker names the endpoint only afterwards, in
  CreateEndpoint, which ``claim`` s the address for it), as ``a.b.c.d/32``:
  the container gets it as a /32, as CNI pods do, and reaches everything
  through 169.254.1.1.
- ReleaseAddress releases only a Docker allocation that no live endpoint
  holds; a CNI address is never touched.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable

from vnetdp.datapath.settings import NodeSettingsFile, SettingError
from vnetdp.docker.protocol import BadRequest, Body, PluginError
from vnetdp.docker.records import IFNAME, Endpoints, NetworkRecords, network_tag
from vnetdp.ipam import errors
from vnetdp.ipam.sources import Pool
from vnetdp.ipam.store import CNI, DOCKER, Allocation, State, Store

log = logging.getLogger("vnetdp.docker")

ADDRESS_SPACE = "vnetdp"
UNASKED_LOOP_S = 1.0
POOL_ID_PREFIX = "vnetdp:"
REQUEST_TYPE = "RequestAddressType"
GATEWAY_REQUEST = "com.docker.network.gateway"
PENDING = "docker"  # Allocation.network of an address Docker asked for, before its endpoint exists
REFRESH_S = 30.0
IPv4 = ipaddress.IPv4Address


def nic_pools(state_dir: str, ipam: dict) -> Callable[[], list[Pool]]:
    """The NIC's pools as CNI IPAM reads them (``ipam``: a CNI ipam section:
    environment azure with url, file, or static), for the node's ``master``
    NIC (node settings), else the document's primary interface."""
    def read() -> list[Pool]:
        from vnetdp.ipam import plugin
        try:
            master = NodeSettingsFile(state_dir).load()["master"]
        except SettingError as e:
            raise PluginError(f"node settings: {e} (correct them with 'vnetdp node set')")
        conf = {"ipam": ipam, "stateDir": state_dir, **({"master": master} if master else {})}
        return plugin.fresh_pools(conf)
    return read


def as_plugin_error(e: errors.IpamError) -> PluginError:
    return PluginError(f"{e.msg}; {e.hint}" if e.hint else e.msg)


def _pool_of(state: State, subnet: str) -> dict | None:
    return next((p for p in state.pools if p["subnet"] == subnet), None)


def _nic_pool(pools: list[dict], subnet: str) -> dict:
    pool = next((p for p in pools if p["subnet"] == subnet), None)
    if pool is None:
        raise PluginError(f"{subnet} is no longer one of the VM NIC's subnets "
                          f"({', '.join(p['subnet'] for p in pools) or 'none'})")
    return pool


def _span(addresses: list[str]) -> str:
    if not addresses:
        return "none"
    return ", ".join(addresses) if len(addresses) <= 4 else f"{addresses[0]} ... {addresses[-1]}"


def describe(alloc: Allocation) -> str:
    """Who holds an address, for messages."""
    if alloc.owner == CNI:
        return f"CNI pod {alloc.container_id[:12]}/{alloc.ifname} (network {alloc.network or 'unnamed'})"
    if not alloc.container_id:
        return "a container Docker is starting (its endpoint is not created yet)"
    return f"Docker endpoint {alloc.container_id[:12]} on network {alloc.network.removeprefix('docker:')[:12]}"


class IpamDriver:
    """``pools``: the NIC's pools from the source (slow: called outside the
    store's lock); ``in_use``: who else holds an address on this node (a live
    endpoint whose address came from elsewhere), or None."""

    def __init__(self, store: Store, networks: NetworkRecords, endpoints: Endpoints,
                 pools: Callable[[], list[Pool]],
                 in_use: Callable[[IPv4], str | None] = lambda address: None) -> None:
        self.store, self.networks, self.endpoints = store, networks, endpoints
        self.source, self.in_use = pools, in_use

    # --- pools ---------------------------------------------------------------
    def _pools(self, wanting: str | None = None, address: IPv4 | None = None, force: bool = False) -> list[dict]:
        """The NIC's pools, re-read from the source when never read, older
        than REFRESH_S, or when subnet ``wanting`` has no free address (or
        does not list ``address``): the NIC may have got more since."""
        try:
            with self.store.transaction() as state:
                pools = state.pools
                used = {a.address for a in state.allocations}
                fresh = pools and not force and time.time() - state.refreshed <= REFRESH_S
                want = _pool_of(state, wanting) if wanting else None
                if want is not None and address is not None:
                    fresh = fresh and str(address) in want["addresses"]
                elif want is not None:
                    fresh = fresh and any(a not in used for a in want["addresses"])
                if fresh:
                    return pools
            source = self.source()
            with self.store.transaction() as state:
                state.refresh(source, time.time())
                return state.pools
        except errors.IpamError as e:
            raise as_plugin_error(e) from e

    def nic_subnet(self, pool: str) -> dict:
        """The NIC's pool for ``pool`` (a CIDR), or an error naming the NIC's subnets."""
        try:
            wanted = ipaddress.IPv4Network(pool, strict=False)
        except ValueError as e:
            raise BadRequest(f"subnet {pool!r} is not an IPv4 prefix: {e}")
        pools = self._pools()
        found = next((p for p in pools if p["subnet"] == str(wanted)), None)
        if found is None:   # the NIC may have a subnet more since the pools were read
            pools = self._pools(force=True)
            found = next((p for p in pools if p["subnet"] == str(wanted)), None)
        if found is None:
            subnets = ", ".join(p["subnet"] for p in pools) or "none"
            raise PluginError(f"subnet {pool} is not one of the VM NIC's subnets ({subnets}): containers on "
                              "vnetdp networks get the NIC's secondary addresses; create the network with "
                              f"--subnet {pools[0]['subnet'] if pools else '<a NIC subnet>'} or without --subnet")
        return found

    @staticmethod
    def subnet_of(pool_id: str) -> str:
        if not pool_id.startswith(POOL_ID_PREFIX):
            raise BadRequest(f"PoolID {pool_id!r} is not one of vnetdp's (vnetdp:<subnet>)")
        try:
            return str(ipaddress.IPv4Network(pool_id[len(POOL_ID_PREFIX):]))
        except ValueError:
            raise BadRequest(f"PoolID {pool_id!r} is not one of vnetdp's (vnetdp:<subnet>)")

    # --- the protocol ---------------------------------------------------------
    def capabilities(self, body: Body) -> dict:
        # Pools and addresses are kept by vnetdp (the store), not by Docker's replay.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, body: Body) -> dict:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    _last_unasked = float("-inf")

    def request_pool(self, body: Body) -> dict:
        space, pool, sub_pool = body.text("AddressSpace"), body.text("Pool"), body.text("SubPool")
        options, v6 = body.strings("Options"), body.flag("V6")
        if space and space != ADDRESS_SPACE:
            raise PluginError(f"address space {space!r} is not vnetdp's ({ADDRESS_SPACE!r}): "
                              "create the network with --ipam-driver vnetdp and no address space of its own")
        if v6:
            raise PluginError("vnetdp has no IPv6: containers get the NIC's IPv4 secondary addresses "
                              "(create the network without --ipv6)")
        unknown = sorted(k for k in options if not k.startswith("com.docker.network."))
        if unknown:
            raise PluginError(f"unknown IPAM option(s) {', '.join(unknown)}: vnetdp's IPAM driver takes none "
                              "(leave out --ipam-opt)")
        if sub_pool:
            raise PluginError(f"--ip-range {sub_pool} is not supported: every free secondary address of "
                              "the NIC in the subnet is the network's (use --ip to pick one)")
        if pool:
            chosen = self.nic_subnet(pool)
        else:
            pools = self._pools()
            if not pools:
                raise PluginError("the interface document lists no subnet for the VM's NIC")
            chosen = pools[0]
            self._refuse_overlap_loop(chosen["subnet"])
        return {"PoolID": POOL_ID_PREFIX + chosen["subnet"], "Pool": chosen["subnet"], "Data": {}}

    def _refuse_overlap_loop(self, subnet: str) -> None:
        """Without --subnet, Docker 20.10 (libnetwork) refuses a pool that
        overlaps the host's routes and asks again, at once and without end; the
        NIC's subnet always overlaps the VM's own route. A second unasked
        request within a second is that loop: end it with the way out."""
        now = time.monotonic()
        last, self._last_unasked = self._last_unasked, now
        if now - last < UNASKED_LOOP_S:
            raise PluginError(f"Docker refuses the NIC's subnet {subnet} when it picks the pool itself (it "
                              f"overlaps the VM's own route): create the network with --subnet {subnet}")

    def release_pool(self, body: Body) -> dict:
        """Addresses Docker never released (a lost ReleaseAddress, a container
        whose CreateEndpoint never came) go back once no network uses the
        subnet any more; Docker's pool has no other meaning here."""
        subnet = self.subnet_of(body.text("PoolID", required=True))
        try:
            with self.store.transaction() as state:
                if any(n.subnet == subnet for n in self.networks.all()):
                    return {}
                live = {r.container_id for r in self.endpoints.all()}
                left = [a for a in state.allocations
                        if a.owner == DOCKER and a.subnet == subnet and a.container_id not in live]
                state.allocations = [a for a in state.allocations if a not in left]
        except errors.IpamError as e:
            raise as_plugin_error(e) from e
        if left:
            log.warning("ReleasePool %s: released %d address(es) Docker left allocated: %s", subnet, len(left),
                        ", ".join(a.address for a in left))
        return {}

    def request_address(self, body: Body) -> dict:
        subnet = self.subnet_of(body.text("PoolID", required=True))
        wanted, options = body.text("Address"), body.strings("Options")
        address = None
        if wanted:
            try:
                address = IPv4(wanted)
            except ValueError:
                raise BadRequest(f"Address {wanted!r} is not an IPv4 address")
        gateway = options.get(REQUEST_TYPE) == GATEWAY_REQUEST
        pool = _nic_pool(self._pools(wanting=None if gateway else subnet, address=address), subnet)
        prefix = ipaddress.IPv4Network(subnet).prefixlen
        if gateway:
            if address is not None and str(address) != pool["gateway"]:
                raise PluginError(f"the gateway of {subnet} is {pool['gateway']} (the cloud fabric's): create "
                                  f"the network without --gateway or with --gateway {pool['gateway']}")
            return {"Address": f"{pool['gateway']}/{prefix}", "Data": {}}
        try:
            with self.store.transaction() as state:
                alloc = self._take(state, subnet, address) if address else self._any(state, subnet)
        except errors.IpamError as e:
            raise as_plugin_error(e) from e
        log.info("RequestAddress %s: %s", subnet, alloc.address)
        return {"Address": f"{alloc.address}/32", "Data": {}}

    def _take(self, state: State, subnet: str, address: IPv4) -> Allocation:
        """Exactly ``address`` (docker run --ip), or a clear error."""
        pool = _nic_pool(state.pools, subnet)
        if address not in ipaddress.IPv4Network(subnet):
            raise PluginError(f"{address} is outside the network's subnet {subnet}")
        if str(address) == pool["gateway"]:
            raise PluginError(f"{address} is the gateway of {subnet} (the cloud fabric's), not a secondary "
                              "address of the VM's NIC")
        if str(address) not in pool["addresses"]:
            raise PluginError(f"{address} is not a secondary address of the VM's NIC in {subnet} (it has "
                              f"{len(pool['addresses'])}: {_span(pool['addresses'])}); add it to the NIC first")
        holder = state.holder(str(address))
        if holder is not None:
            raise PluginError(f"{address} is in use by {describe(holder)}")
        other = self.in_use(address)
        if other:
            raise PluginError(f"{address} is in use on this node: {other}")
        alloc = Allocation("", "", str(address), subnet, pool["gateway"], time.time(), PENDING, DOCKER)
        state.allocations.append(alloc)
        return alloc

    def _any(self, state: State, subnet: str) -> Allocation:
        try:
            return state.allocate("", "", time.time(), PENDING, DOCKER, subnet=subnet)
        except errors.PoolExhausted:
            pool = _nic_pool(state.pools, subnet)
            held = [a for a in state.allocations if a.address in set(pool["addresses"])]
            docker = sum(1 for a in held if a.owner == DOCKER)
            raise PluginError(
                f"no free address in {subnet}: the VM's NIC has {len(pool['addresses'])} secondary "
                f"address(es) there and all are in use ({len(held) - docker} by CNI pods, {docker} by Docker "
                "containers); add secondary IP addresses to the VM's NIC (vnetdp re-reads them on the next "
                "request)") from None

    def release_address(self, body: Body) -> dict:
        subnet = self.subnet_of(body.text("PoolID", required=True))
        wanted = body.text("Address", required=True)
        try:
            address = IPv4(wanted)
        except ValueError:
            raise BadRequest(f"Address {wanted!r} is not an IPv4 address")
        if address not in ipaddress.IPv4Network(subnet):
            raise BadRequest(f"{address} is outside the pool {subnet}")
        try:
            with self.store.transaction() as state:
                holder = state.holder(str(address))
                if holder is None or holder.owner != DOCKER:
                    if holder is not None:
                        log.warning("ReleaseAddress %s: held by %s, not Docker's: left alone", address,
                                    describe(holder))
                    return {}   # the gateway, or released already
                if holder.container_id and self.endpoints.get(holder.container_id) is not None:
                    log.warning("ReleaseAddress %s: %s still exists: left allocated", address, describe(holder))
                    return {}
                state.allocations.remove(holder)
        except errors.IpamError as e:
            raise as_plugin_error(e) from e
        log.info("ReleaseAddress %s: released", address)
        return {}

    # --- for the network driver ---------------------------------------------------
    def claim(self, address: IPv4, endpoint_id: str, network_id: str) -> Allocation:
        """Docker's allocation of ``address`` becomes ``endpoint_id``'s."""
        try:
            with self.store.transaction() as state:
                holder = state.holder(str(address))
                if holder is None:
                    raise PluginError(f"{address} was not given out by vnetdp's IPAM driver: create the network "
                                      "with --ipam-driver vnetdp")
                if holder.owner != DOCKER or holder.container_id not in ("", endpoint_id):
                    raise PluginError(f"{address} is in use by {describe(holder)}")
                claimed = dataclasses.replace(holder, container_id=endpoint_id, ifname=IFNAME,
                                              network=network_tag(network_id))
                state.allocations[state.allocations.index(holder)] = claimed
                return claimed
        except errors.IpamError as e:
            raise as_plugin_error(e) from e

    def unclaim(self, address: IPv4, endpoint_id: str) -> None:
        """Back to Docker's request (a CreateEndpoint that failed: Docker
        releases the address next)."""
        with self.store.transaction() as state:
            holder = state.holder(str(address))
            if holder is not None and holder.owner == DOCKER and holder.container_id == endpoint_id:
                state.allocations[state.allocations.index(holder)] = dataclasses.replace(
                    holder, container_id="", ifname="", network=PENDING)
