"""The CNI plugins vnetdp provides, by executable name: the one table that
the entry point (in-process path) and the agent's workers dispatch on."""
from __future__ import annotations

from collections.abc import Mapping

from vnetdp.cni import invoke, skel

NETWORK = "vnetdp"
IPAM = "vnetdp-ipam"


def _handler(plugin: str) -> skel.Handler:
    from vnetdp.ipam import plugin as ipam_plugin
    invoke.register(IPAM, ipam_plugin.handle)  # vnetdp's IPAM runs in-process, wherever called from
    if plugin == IPAM:
        return ipam_plugin.handle
    from vnetdp.network import commands
    return commands.handle


def run(plugin: str, environ: Mapping[str, str] | None = None, stdin: bytes | None = None) -> int:
    """One CNI call of ``plugin`` (any name other than vnetdp-ipam is the network plugin)."""
    return skel.run(plugin, _handler(plugin), environ, stdin)


def preload() -> None:
    """Import both plugins (the agent does, before it forks workers)."""
    _handler(NETWORK)
