"""The datapath part of a Docker endpoint, the same as a CNI pod's: the
host side is ``vnetdp.endpoint``'s (/32 route and neighbour, endpoint map
entry, ``from_container`` and ``to_container`` attached), only the veth's
other end is left in the node's namespace for Docker to move into the
container, and the container side is Docker's (its address, the route to
169.254.1.1 and the default route, from Join's answer) plus what ``settle``
adds once the interface is there.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os

from pyroute2 import IPRoute

from vnetdp import endpoint, links, netns
from vnetdp.datapath.node import Node, NodeSettings, NodeSetupError
from vnetdp.datapath.settings import NodeSettingsFile, SettingError
from vnetdp.docker.protocol import PluginError
from vnetdp.docker.records import IFNAME, host_ifname, peer_ifname
from vnetdp.network.records import PodRecord

IFF_UP = 0x1


def random_mac() -> str:
    """A locally administered unicast MAC."""
    return "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))


class NodePlumbing:
    """Endpoints on this node's datapath (pins under ``bpffs_dir``, the
    node's settings in ``state_dir``); every call runs in the node's network
    namespace, as ``vnetdp.endpoint`` wants."""

    def __init__(self, state_dir: str, bpffs_dir: str) -> None:
        self.state_dir, self.bpffs_dir = state_dir, bpffs_dir

    def node(self) -> Node:
        try:
            settings = NodeSettingsFile(self.state_dir).load()
        except SettingError as e:
            raise PluginError(f"node settings: {e} (correct them with 'vnetdp node set')")
        return Node(NodeSettings(bpffs_dir=self.bpffs_dir, state_dir=self.state_dir, **settings))

    def nic_mtu(self) -> int:
        try:
            with IPRoute() as ipr:
                return self.node().nic(ipr).mtu
        except NodeSetupError as e:
            raise PluginError(str(e)) from e

    def in_use(self, address: ipaddress.IPv4Address) -> str | None:
        """The node's own address, or one a live endpoint holds (its address
        given by another IPAM plugin): the CNI plugin's test, the same one."""
        from vnetdp.network.commands import in_use
        return in_use(self.node(), address)

    def add(self, endpoint_id: str, address: ipaddress.IPv4Address, mtu: int | None,
            host_mac: str | None = None, pod_mac: str | None = None) -> tuple[str, str]:
        node = self.node()
        name, peer = host_ifname(endpoint_id), peer_ifname(endpoint_id)
        macs = (host_mac or random_mac(), pod_mac or random_mac()) if host_mac or pod_mac else None
        try:
            with contextlib.ExitStack() as undo, IPRoute() as ipr:
                nic_mtu = node.configure(ipr).nic.mtu
                links.delete_link(ipr, name)   # a leftover of an interrupted call for this endpoint
                held = self.in_use(address)
                if held:
                    raise PluginError(f"{address} is in use on this node: {held}")
                here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    host = links.create_veth(ipr, name, peer, here, mtu or nic_mtu, macs)
                finally:
                    os.close(here)
                undo.callback(links.delete_link, ipr, name)
                container_end = links.get_link(ipr, peer)
                endpoint.add_host_side(node, ipr, host, address, container_end.mac, undo)
                undo.pop_all()
                return host.mac, container_end.mac
        except NodeSetupError as e:
            raise PluginError(f"this node cannot carry endpoints: {e}") from e

    def intact(self, endpoint_id: str, address: ipaddress.IPv4Address) -> bool:
        with IPRoute() as ipr:
            return not endpoint.check_host_side(self.node(), ipr, host_ifname(endpoint_id), address)

    def delete(self, endpoint_id: str, address: ipaddress.IPv4Address | None) -> None:
        endpoint.delete(self.node(), endpoint_id, IFNAME, address)

    def settle(self, record: PodRecord) -> bool:
        """Inside the container, once Docker has moved, renamed, addressed and
        raised the interface (found by its MAC): the permanent neighbour entry
        for 169.254.1.1 with the host end's MAC (as a CNI pod has; until then
        the datapath answers the container's ARP), and with ``nicAttach xdp``
        the XDP program the container end needs to receive XDP-redirected
        frames. True when done, or when there is nothing left to do (the
        container is gone)."""
        if not record.netns or not record.pod_mac:
            return True
        try:  # Docker makes the sandbox's namespace after Join answers: until then, not yet
            target = netns.open_ns(record.netns)
        except netns.NetnsNotFound:
            return False
        node = self.node()
        try:
            with contextlib.ExitStack() as inside:
                try:
                    inside.enter_context(netns.enter_fd(target, record.netns))
                except netns.NetnsNotFound:  # the file exists, the namespace is not mounted on it yet
                    return False
                ipr = inside.enter_context(IPRoute())
                link = next((x for x in ipr.get_links()
                             if (x.get_attr("IFLA_ADDRESS") or "").lower() == record.pod_mac.lower()), None)
                if link is None or not link["flags"] & IFF_UP:
                    return False
                if ipaddress.IPv4Address(record.address) not in \
                        {a.ip for a in links.ipv4_interfaces(ipr, link["index"])}:
                    return False
                ipr.neigh("replace", dst=str(endpoint.POD_GATEWAY), lladdr=record.host_mac,
                          ifindex=link["index"], state=links.NUD_PERMANENT)
                if node.settings.nic_attach == "xdp":
                    endpoint.attach_pod_xdp(node, link.get_attr("IFLA_IFNAME"), host_ifname(record.container_id))
            return True
        finally:
            os.close(target)
