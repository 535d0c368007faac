"""What several unit test files share: paths, a CNI call's environment, an IPAM
configuration that needs no network.

Imported as a plain module (``import helpers``): pytest's default import mode
(prepend) puts the first directory upward of a test file without an
``__init__.py`` on sys.path, which for tests/unit/*.py is tests/unit itself.
"""
from __future__ import annotations

import pathlib

from vnetdp.cni.spec import Env

REPO = pathlib.Path(__file__).resolve().parents[2]
CNI_DIR = REPO / "cni"

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def environ(command: str, container_id: str = "c1", ifname: str = "eth0") -> dict[str, str]:
    """The CNI_* variables of one call (a netns for every command, as runtimes give it)."""
    return {**ADD_ENV, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname}


def cni_env(command: str, container_id: str = "c1", ifname: str = "eth0") -> Env:
    return Env.parse(environ(command, container_id, ifname))


def ipam_conf(state_dir, version: str = "1.1.0", **ipam) -> dict:
    """A network configuration whose vnetdp-ipam section takes its addresses
    from a static range (10.9.0.2-10.9.0.4 unless ``ranges`` says otherwise)
    and keeps its state in ``state_dir``."""
    section = {"type": "vnetdp-ipam", "environment": "static", "stateDir": str(state_dir),
               "ranges": [[{"subnet": "10.9.0.0/29", "rangeEnd": "10.9.0.4"}]], **ipam}
    return {"cniVersion": version, "name": "net1", "type": "vnetdp", "ipam": section}
