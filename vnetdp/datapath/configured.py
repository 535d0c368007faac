"""What the node's last ``Node.configure()`` was made from, so that ADD can
tell cheaply that it still holds (``Node.ensure``) instead of configuring the
node again on every pod.

Configure's inputs are the node settings (``node.json`` and the pin and state
directories), the build the ``current`` marker names, the pinned maps and
programs, and the NIC (name, index, MAC, MTU, IPv4 addresses); its outputs
that can vanish behind its back are the NIC's attachments. A configure that
finishes records them all in ``<state dir>/node-configured.json`` (under the
node lock, after removing the old record first: a configure cut short leaves
none); ``holds`` compares the live state with the record: ~20 stats, two
or three netlink requests and a BPF object lookup per NIC hook, no map
write. A record file, not memory: the agent's workers serve one call each.

Pins are compared by (device, inode), so maps or programs pinned again (a
new bpffs after a reboot, a rebuild) count as changed. Anything else that
changes the node's maps goes through ``configure`` (``vnetdp node set``,
reconcile) or moves the marker (``vnetdp upgrade``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any

from vnetdp import rtnl
from vnetdp.datapath import attach
from vnetdp.files import atomic_write

if TYPE_CHECKING:
    from vnetdp.datapath.node import Node

RECORD_FILE = "node-configured.json"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a configure is made from, as found live."""

    settings: dict[str, Any]
    build: str
    pins: dict[str, tuple[int, int]]   # path -> (device, inode)
    nic: rtnl.Link
    addresses: list[ipaddress.IPv4Interface]  # the NIC's, primary first


def _path(node: Node) -> str:
    return os.path.join(node.settings.state_dir, RECORD_FILE)


def _nic(rt: rtnl.Rtnl, master: str | None) -> rtnl.Link | None:
    """The NIC as ``Node.nic`` picks it; None when there is none to pick."""
    if master:
        try:
            return rtnl.get_link(rt, master)
        except rtnl.LinkNotFound:
            return None
    oif = rtnl.default_route_oif(rt)
    return rtnl.link_by_index(rt, oif) if oif else None


def _pins(node: Node) -> dict[str, tuple[int, int]]:
    found = {}
    for directory in (node.bpffs.maps_dir, node.bpffs.progs_dir(node.programs.build)):
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                found[entry.path] = (st.st_dev, st.st_ino)
    return found


def observe(node: Node, rt: rtnl.Rtnl) -> Inputs | None:
    """Configure's inputs as they are now (``rt``: a socket in the node's
    namespace); None when the node has no NIC to configure."""
    nic = _nic(rt, node.settings.master)
    if nic is None:
        return None
    addresses = [a for _, a in rtnl.ipv4_interfaces(rt, nic.index)]
    return Inputs(dataclasses.asdict(node.settings), node.programs.build, _pins(node), nic, addresses)


def _attachments(node: Node, nic: rtnl.Link) -> dict[str, int | None]:
    """NIC hook -> the program id vnetdp has attached there."""
    found = {}
    for hook in node.nic_hooks():
        current = attach.attached(nic.index, hook, node.bpffs.link_pin(nic.name, hook))
        found[hook] = current.prog_id if current else None
    return found


def _text(node: Node, inputs: Inputs) -> str:
    return json.dumps({**dataclasses.asdict(inputs), "addresses": [str(a) for a in inputs.addresses],
                       "attached": _attachments(node, inputs.nic)}, sort_keys=True)


def forget(node: Node) -> None:
    """Before a configure: until it finishes, nothing holds."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(node))


def record(node: Node, inputs: Inputs) -> None:
    """After a configure made from ``inputs`` (observed before it began: a
    change meanwhile makes the record stale, never wrong)."""
    atomic_write(_path(node), _text(node, inputs))


def holds(node: Node, inputs: Inputs) -> bool:
    """Whether the last configure was made from ``inputs`` and what it
    attached to the NIC is still there."""
    try:
        with open(_path(node)) as f:
            recorded = f.read()
    except FileNotFoundError:
        return False
    return recorded == _text(node, inputs)
