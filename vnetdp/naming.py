"""Names derived from a CNI attachment (container ID, ifname): one hash
serves the host veth's name and the pod record's file name."""
from __future__ import annotations

import hashlib

HOST_IFNAME_PREFIX = "vnd"
HOST_IFNAME_HEX = 11  # "vnd" + 11 hex digits: 14 characters, under IFNAMSIZ


def attachment_hash(container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()


def host_ifname(container_id: str, ifname: str) -> str:
    """The host end of the pod's veth (SPEC §4)."""
    return HOST_IFNAME_PREFIX + attachment_hash(container_id, ifname)[:HOST_IFNAME_HEX]


def is_host_ifname(name: str) -> bool:
    digits = name[len(HOST_IFNAME_PREFIX):]
    return (name.startswith(HOST_IFNAME_PREFIX) and len(digits) == HOST_IFNAME_HEX
            and all(c in "0123456789abcdef" for c in digits))
