"""``vnetdp docker-plugin``: one long-running process serving libnetwork's
NetworkDriver and IpamDriver on a unix socket (Docker finds it at
``/run/docker/plugins/vnetdp.sock``: plugin name ``vnetdp``).

Nothing lives only in its memory: networks and endpoints are records,
addresses are in the node's IPAM store, the datapath in the pinned maps. A
plugin killed at any point (SIGKILL included) and started again carries on;
containers' traffic never depends on it.
"""
from __future__ import annotations

import logging
import signal
import threading

from vnetdp.docker import protocol
from vnetdp.docker.ipam import IpamDriver, nic_pools
from vnetdp.docker.network import NetworkDriver, Plumbing, Settler
from vnetdp.docker.records import Endpoints, NetworkRecords
from vnetdp.ipam.store import Store

IMPLEMENTS = ["NetworkDriver", "IpamDriver"]

log = logging.getLogger("vnetdp.docker")


def routes(network: NetworkDriver, ipam: IpamDriver) -> dict[str, protocol.Handler]:
    """Every method the plugin serves, by path (without the leading '/')."""
    return {
        "Plugin.Activate": protocol.read_only({"Implements": IMPLEMENTS}),
        "NetworkDriver.GetCapabilities": network.capabilities,
        "NetworkDriver.CreateNetwork": network.create_network,
        "NetworkDriver.DeleteNetwork": network.delete_network,
        "NetworkDriver.CreateEndpoint": network.create_endpoint,
        "NetworkDriver.DeleteEndpoint": network.delete_endpoint,
        "NetworkDriver.EndpointOperInfo": network.endpoint_info,
        "NetworkDriver.Join": network.join,
        "NetworkDriver.Leave": network.leave,
        "NetworkDriver.ProgramExternalConnectivity": network.program_external,
        "NetworkDriver.RevokeExternalConnectivity": network.revoke_external,
        "NetworkDriver.DiscoverNew": network.discover,
        "NetworkDriver.DiscoverDelete": network.discover,
        "IpamDriver.GetCapabilities": ipam.capabilities,
        "IpamDriver.GetDefaultAddressSpaces": ipam.address_spaces,
        "IpamDriver.RequestPool": ipam.request_pool,
        "IpamDriver.ReleasePool": ipam.release_pool,
        "IpamDriver.RequestAddress": ipam.request_address,
        "IpamDriver.ReleaseAddress": ipam.release_address,
    }


def drivers(state_dir: str, ipam_section: dict, plumbing: Plumbing,
            settler: Settler | None = None) -> tuple[NetworkDriver, IpamDriver]:
    """Both drivers on one node's state (``ipam_section``: where the NIC's
    addresses come from, as a CNI config's ipam section says it)."""
    endpoints = Endpoints(state_dir)
    ipam = IpamDriver(Store(state_dir), NetworkRecords(state_dir), endpoints, nic_pools(state_dir, ipam_section),
                      plumbing.in_use)
    return NetworkDriver(state_dir, plumbing, ipam, settler), ipam


def serve(socket_path: str, state_dir: str, bpffs_dir: str, ipam_section: dict) -> None:
    """Serve until SIGTERM or SIGINT (the socket removed then)."""
    from vnetdp.docker.plumbing import NodePlumbing

    network, ipam = drivers(state_dir, ipam_section, NodePlumbing(state_dir, bpffs_dir))
    server = protocol.Server(socket_path, routes(network, ipam))

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    network.settler.resume()   # joined endpoints a killed plugin may not have finished
    log.info("serving libnetwork's NetworkDriver and IpamDriver on %s (state %s, pins %s)",
             socket_path, state_dir, bpffs_dir)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
