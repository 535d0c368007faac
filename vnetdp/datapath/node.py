"""One node's datapath: its settings, the build of programs it runs, the NIC.

``Node.configure()`` loads the programs (compiling only when the build is not
pinned yet), writes the node settings and attaches the NIC program; it is the
only place that compiles (through the loader) or attaches to the NIC.
``Node.ensure()``, what every ADD calls first, configures only when anything
configure is made from changed since the last one (``configured``).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from vnetdp import links, rtnl
from vnetdp.datapath import attach, configured
from vnetdp.datapath import maps as M
from vnetdp.datapath.bpffs import Bpffs
from vnetdp.datapath.loader import LoadResult, Programs
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.locks import flocked

FABRIC_GATEWAY_MAC = "12:34:56:78:9a:bc"


class NodeSetupError(Exception):
    """The node cannot carry endpoints (no NIC, no address, ...)."""


@dataclass
class NodeSettings:
    """Where the node's datapath lives, and the node's settings
    (``vnetdp.datapath.settings`` keeps and checks them)."""

    bpffs_dir: str
    state_dir: str
    master: str | None = None            # NIC name; default: the default route's
    gateway_mac: str = FABRIC_GATEWAY_MAC
    vnet_cidrs: list[str] | None = None  # default: the NIC's subnets
    host_destinations: list[str] = field(default_factory=list)  # to the host stack
    local_switching: bool = True
    enable_snat: bool = True             # translate traffic leaving the VNet (SPEC §5 step 5)
    snat_ports: tuple[int, int] = (61000, 65535)  # outside Linux's default ephemeral range
    nic_attach: str = "tc"               # "tc" or "xdp" (in front of tc: see nic_hooks)
    allow_host_agent: bool = False       # pods may reach the host agent's wireserver ports
    allow_metadata: bool = False         # pods may reach the instance metadata service
    snat_flows_per_endpoint: int = 16384  # SNAT flows one pod may hold (0: no limit)
    metadata_url: str | None = None      # the instance metadata document: which pods have public IPs (None: none)
    attach_mode: str = "auto"            # NIC tc mechanism: "auto" (tcx, else clsact), "tcx", "clsact"
    # Pods' veths: clsact by default. Creating a tcx link costs ~13 ms in the kernel
    # per device (6.18, measured); a clsact qdisc and filter ~1 ms. Per packet both
    # run at the same hook.
    pod_attach_mode: str = "clsact"
    cflags: tuple[str, ...] = ()


def nic_hooks(nic_attach: str) -> dict[str, str]:
    """The NIC's programs by hook: from_nic at tc ingress, and with
    nic_attach "xdp" from_nic_xdp in front of it, which passes on to tc
    what it cannot finish (frames for a pod whose ingress a qdisc shapes)."""
    hooks = {"ingress": "from_nic"}
    if nic_attach == "xdp":
        hooks["xdp"] = "from_nic_xdp"
    return hooks


@dataclass(frozen=True)
class NodeState:
    nic: links.Link
    primary_ip: ipaddress.IPv4Address
    vnet_cidrs: list[ipaddress.IPv4Network]
    load: LoadResult


class Node:
    """This node's datapath: settings, programs (``Programs``: the compiled build), NIC."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.bpffs = Bpffs(settings.bpffs_dir)
        self.programs = Programs(self.bpffs, settings.state_dir, settings.cflags)

    def maps(self) -> M.Maps:
        return M.Maps(self.bpffs.maps_dir)

    def nic(self, ipr: IPRoute) -> links.Link:
        if self.settings.master:
            try:
                return links.get_link(ipr, self.settings.master)
            except links.LinkNotFound as e:
                raise NodeSetupError(f"master interface {self.settings.master!r} not found") from e
        oif = links.default_route_oif(ipr)
        if oif is None:
            raise NodeSetupError("no default route to pick the NIC from; set 'master'")
        return links.link_by_index(ipr, oif)

    def configure(self, ipr: IPRoute | None = None) -> NodeState:
        """Load (or reuse) programs, write node settings, attach the NIC program
        (netlink through ``ipr`` when the caller has a socket open); recorded
        for ``ensure``."""
        load = self.programs.load()
        with self._locked():
            return self._configure_recorded(load, ipr)

    def ensure(self, rt: rtnl.Rtnl) -> NodeState:
        """The node as ``configure`` leaves it: configured again only when
        anything it is made from changed since the last configure, or what it
        attached to the NIC is gone (``rt``: a socket in the node's namespace)."""
        state = self._as_recorded(rt)
        if state is None:
            load = self.programs.load()
            with self._locked():  # calls that all found it changed wait here: the first configures
                state = self._as_recorded(rt) or self._configure_recorded(load)
        return state

    def _locked(self) -> contextlib.AbstractContextManager:
        """One configure at a time on this node."""
        return flocked(os.path.join(self.settings.state_dir, "node.lock"))

    def _as_recorded(self, rt: rtnl.Rtnl) -> NodeState | None:
        """The node's state when the last configure still holds; None when it
        must be configured."""
        inputs = configured.observe(self, rt)
        if inputs is None or not inputs.addresses or not configured.holds(self, inputs):
            return None
        return NodeState(inputs.nic, inputs.addresses[0].ip, self._vnet_cidrs(inputs.addresses),
                         LoadResult(self.programs.build, False, 0.0))

    def _configure_recorded(self, load: LoadResult, ipr: IPRoute | None = None) -> NodeState:
        """``configure`` under the node lock, what it is made from recorded
        once it is done (a configure cut short leaves no record)."""
        configured.forget(self)
        with rtnl.Rtnl() as rt:
            inputs = configured.observe(self, rt)
        with contextlib.ExitStack() as own:
            state = self._configure(load, ipr or own.enter_context(IPRoute()))
        if inputs is not None:
            configured.record(self, inputs)
        return state

    def _vnet_cidrs(self, addrs: list[ipaddress.IPv4Interface]) -> list[ipaddress.IPv4Network]:
        """The VNet's prefixes: the setting, else the NIC's subnets."""
        if self.settings.vnet_cidrs:
            return [ipaddress.IPv4Network(c) for c in self.settings.vnet_cidrs]
        return sorted({a.network for a in addrs})

    def _configure(self, load: LoadResult, ipr: IPRoute) -> NodeState:
        """Node settings, prefixes and the NIC attachment; one process at a time."""
        # An upgrade may have moved the current-build marker since load(): the
        # NIC must get the build the marker names now, never the one it replaced.
        self.programs.refresh()
        s = self.settings
        nic = self.nic(ipr)
        addrs = links.ipv4_interfaces(ipr, nic.index)
        if not addrs:
            raise NodeSetupError(f"NIC {nic.name} has no IPv4 address")
        low, high = s.snat_ports
        if not 1 <= low <= high <= 65535:
            raise NodeSetupError(f"SNAT port range {low}-{high} is not a range of ports")
        primary = addrs[0].ip
        cidrs = self._vnet_cidrs(addrs)
        with self.maps() as m:
            flags = (M.NODE_LOCAL_SWITCHING if s.local_switching else 0) | \
                (M.NODE_SNAT if s.enable_snat else 0) | \
                (M.NODE_ALLOW_HOST_AGENT if s.allow_host_agent else 0) | \
                (M.NODE_ALLOW_METADATA if s.allow_metadata else 0)
            m.put_node(M.Node(nic.index, nic.mac, s.gateway_mac, primary, low, high, flags,
                              s.snat_flows_per_endpoint))
            wanted = {net: M.Dest.VNET for net in cidrs}
            wanted.update({ipaddress.IPv4Network(f"{a.ip}/32"): M.Dest.HOST for a in addrs})
            wanted.update({ipaddress.IPv4Network(h): M.Dest.HOST for h in s.host_destinations})
            for net, dest in m.cidrs().items():
                if wanted.get(net) != dest:
                    m.delete_cidr(net)
            for net, dest in wanted.items():
                m.put_cidr(net, dest)
        self._attach_nic(nic, ipr)
        return NodeState(nic, primary, cidrs, load)

    def nic_hooks(self) -> dict[str, str]:
        """The NIC's programs by hook, for this node's nic_attach (``nic_hooks``)."""
        return nic_hooks(self.settings.nic_attach)

    def _attach_nic(self, nic: links.Link, ipr: IPRoute) -> None:
        hooks = self.nic_hooks()
        if "xdp" not in hooks:
            attach.detach(nic.index, "xdp", self.bpffs.link_pin(nic.name, "xdp"), ipr)
        for hook, prog in hooks.items():
            fd = self.programs.prog_fd(prog)
            try:
                attach.attach(fd, nic.index, hook, self.bpffs.link_pin(nic.name, hook),
                              self.settings.attach_mode, ipr)
            finally:
                os.close(fd)


def node_for(state_dir: str, bpffs_dir: str, cflags: tuple[str, ...] = ()) -> Node:
    """The node as its settings file (in ``state_dir``) describes it, building with ``cflags``."""
    return Node(NodeSettings(bpffs_dir=bpffs_dir, state_dir=state_dir, cflags=tuple(cflags),
                             **NodeSettingsFile(state_dir).load()))
