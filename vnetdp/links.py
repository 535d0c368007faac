"""Netlink plumbing for endpoints (pyroute2): veths, addresses, routes, neighbours.

Functions act on the calling thread's namespace through the ``IPRoute`` passed
in; "already gone" is never an error for removals. What ADD does on every pod
goes through ``vnetdp.rtnl`` instead (raw netlink, no event loop per request);
the two share ``Link`` and ``LinkNotFound``.
"""
from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnetdp.rtnl import NUD_PERMANENT, SCOPE_LINK, Link, LinkNotFound  # noqa: F401  (links.X for callers)


def get_link(ipr: IPRoute, name: str) -> Link:
    # A kernel-side lookup: get_links(ifname=...) dumps every link and filters in
    # Python, 14 ms per call with 500 links here, and ADD would slow down with pods.
    try:
        msg = ipr.link("get", ifname=name)[0]
    except (NetlinkError, IndexError) as e:
        if isinstance(e, NetlinkError) and e.code not in (errno.ENODEV, errno.ENOENT):
            raise
        raise LinkNotFound(name) from None
    return Link(name, msg["index"], msg.get_attr("IFLA_ADDRESS"), msg.get_attr("IFLA_MTU"))


def link_by_index(ipr: IPRoute, index: int) -> Link:
    msg = ipr.get_links(index)[0]
    return Link(msg.get_attr("IFLA_IFNAME"), index, msg.get_attr("IFLA_ADDRESS"), msg.get_attr("IFLA_MTU"))


def _found(ipr: IPRoute, command: str, **which) -> bool:
    """Run a link command; False when the link is not there."""
    try:
        ipr.link(command, **which)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete ``name`` (a veth takes its peer along); False when it was not there."""
    return _found(ipr, "del", ifname=name)


def create_veth(ipr: IPRoute, name: str, peer: str, peer_netns_fd: int, mtu: int,
                macs: tuple[str, str] | None = None) -> Link:
    """A veth pair with ``peer`` created directly inside another namespace
    (with ``macs``, (this end's, the peer's) MAC addresses; else random ones)."""
    ours, theirs = ({"address": macs[0]}, {"address": macs[1]}) if macs else ({}, {})
    ipr.link("add", ifname=name, kind="veth", mtu=mtu, **ours,
             peer={"ifname": peer, "net_ns_fd": peer_netns_fd, "mtu": mtu, **theirs})
    link = get_link(ipr, name)
    ipr.link("set", index=link.index, state="up")
    return link


def route_host(ipr: IPRoute, address: ipaddress.IPv4Address, link: Link, mac: str) -> None:
    """/32 route and permanent neighbour for one address behind ``link``."""
    ipr.route("replace", dst=f"{address}/32", oif=link.index, scope=SCOPE_LINK)
    ipr.neigh("replace", dst=str(address), lladdr=mac, ifindex=link.index, state=NUD_PERMANENT)


def default_route_oif(ipr: IPRoute) -> int | None:
    for route in ipr.get_default_routes(family=2):
        oif = route.get_attr("RTA_OIF")
        if oif:
            return oif
    return None


def ipv4_interfaces(ipr: IPRoute, index: int) -> list[ipaddress.IPv4Interface]:
    """The interface's IPv4 addresses with their prefixes, primary first."""
    return [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(family=2, index=index)]
