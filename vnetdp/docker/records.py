"""What the Docker driver keeps on disk, so that a killed plugin loses nothing:

- a network record per Docker network (``<state-dir>/docker/networks/<id>.json``,
  written atomically): its subnet, gateway and what its options ask;
- a pod record per endpoint, beside the CNI plugin's (``vnetdp.network.records``):
  container ID = the Docker endpoint ID, ifname ``eth0`` (the host veth is
  ``naming.host_ifname(endpoint ID, "eth0")``), network ``docker:<network ID>``,
  ipam_type ``vnetdp-docker``. Being there makes every tool that reads pod
  records see Docker's endpoints: CNI GC keeps their veths (it removes only
  veths no record explains) and never deletes their records (they name no
  CNI network), ``vnetdp ipam rebuild`` leaves their addresses to IPAM's own
  leases (their ipam_type is not vnetdp-ipam);
- locks, one file per network and endpoint (``<state-dir>/docker/locks/``).

Addresses live in the node's IPAM store (owner ``docker``), datapath state in
the pinned maps.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from vnetdp import naming
from vnetdp.files import atomic_write, json_records
from vnetdp.defaults import GC_LOCK
from vnetdp.locks import WAIT_S as LOCK_WAIT_S
from vnetdp.locks import LockTimeout, flocked
from vnetdp.network.records import PodRecord, PodRecords

DOCKER_DIR = "docker"
NETWORK_TAG = "docker:"      # PodRecord.network of a Docker endpoint: "docker:<network ID>"
IPAM_TYPE = "vnetdp-docker"  # PodRecord.ipam_type of a Docker endpoint
IFNAME = "eth0"              # the attachment key's ifname (Docker names the interface in the container)
PEER_PREFIX = "vnp"          # the container end, in the node's namespace until Docker moves it


class Busy(Exception):
    """Another call holds the lock for too long."""


def network_tag(network_id: str) -> str:
    return NETWORK_TAG + network_id


def is_docker(record: PodRecord) -> bool:
    return record.network.startswith(NETWORK_TAG) and record.ipam_type == IPAM_TYPE


def host_ifname(endpoint_id: str) -> str:
    return naming.host_ifname(endpoint_id, IFNAME)


def peer_ifname(endpoint_id: str) -> str:
    """The container end's name until Docker renames it inside the container
    (the same hash as the host end, another prefix)."""
    return PEER_PREFIX + naming.attachment_hash(endpoint_id, IFNAME)[:naming.HOST_IFNAME_HEX]


@dataclass(frozen=True)
class NetworkRecord:
    network_id: str
    subnet: str                 # the pool: one of the NIC's subnets
    gateway: str                # the subnet's gateway as Docker holds it (a.b.c.d/n)
    asks: dict[str, Any] = field(default_factory=dict)  # node settings the network asks for (config names)
    mtu: int = 0                # 0: the NIC's
    iface_prefix: str = "eth"   # the container interface's name prefix
    created: float = 0.0

    def differences(self, other: NetworkRecord) -> list[str]:
        """What differs from ``other`` (creation time aside)."""
        ours, theirs = asdict(self), asdict(other)
        return [f"{k} {ours[k]!r} (now {theirs[k]!r})" for k in ours if k != "created" and ours[k] != theirs[k]]


class NetworkRecords:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, DOCKER_DIR, "networks")

    def _path(self, network_id: str) -> str:
        return os.path.join(self.dir, f"{network_id}.json")

    def get(self, network_id: str) -> NetworkRecord | None:
        try:
            with open(self._path(network_id)) as f:
                return NetworkRecord(**json.load(f))
        except FileNotFoundError:
            return None

    def save(self, record: NetworkRecord) -> None:
        os.makedirs(self.dir, exist_ok=True)
        atomic_write(self._path(record.network_id), json.dumps(asdict(record), indent=1, sort_keys=True))

    def remove(self, network_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(network_id))

    def all(self) -> list[NetworkRecord]:
        return json_records(self.dir, NetworkRecord)


class Endpoints:
    """Docker's endpoints, as pod records (see the module's doc)."""

    def __init__(self, state_dir: str) -> None:
        self.records = PodRecords(state_dir)

    def get(self, endpoint_id: str) -> PodRecord | None:
        record = self.records.get(endpoint_id, IFNAME)
        return record if record is not None and is_docker(record) else None

    def save(self, record: PodRecord) -> None:
        self.records.save(record)

    def remove(self, endpoint_id: str) -> None:
        if self.get(endpoint_id) is not None:
            self.records.remove(endpoint_id, IFNAME)

    def all(self) -> list[PodRecord]:
        return [r for r in self.records.all() if is_docker(r)]

    def of_network(self, network_id: str) -> list[PodRecord]:
        return [r for r in self.all() if r.network == network_tag(network_id)]


@contextlib.contextmanager
def locked(state_dir: str, *names: str, shared: tuple[str, ...] = ()) -> Iterator[None]:
    """The CNI plugin's GC lock shared (a CNI GC never runs while an endpoint
    is half made), then ``shared`` and ``names`` (one file each under
    ``docker/locks``, in the order given), each waited for at most
    LOCK_WAIT_S."""
    locks = os.path.join(state_dir, DOCKER_DIR, "locks")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(flocked(os.path.join(state_dir, GC_LOCK), exclusive=False, timeout=LOCK_WAIT_S))
            for name in shared:
                held.enter_context(flocked(os.path.join(locks, f"{name}.lock"), exclusive=False,
                                           timeout=LOCK_WAIT_S))
            for name in names:
                held.enter_context(flocked(os.path.join(locks, f"{name}.lock"), timeout=LOCK_WAIT_S))
        except LockTimeout as e:
            raise Busy(f"another call for the same network or endpoint is still running ({e}); try again")
        yield
