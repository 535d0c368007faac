"""What the network plugin remembers per pod attachment (container ID,
ifname): the network, the netns, the address and the runtime's pod name.
Written before any plumbing, removed after all of it is gone, so DEL and GC
always know what to undo, also after a crash or with the pod's namespace
already deleted. Not flushed to disk: what a record describes (a veth, a
netns) does not outlive a reboot, and the address it names is the IPAM
store's, which is. ("Attachment" alone means a BPF program on a hook.)"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass

from vnetdp.files import atomic_write, json_records
from vnetdp.naming import attachment_hash

RECORDS_DIR = "attachments"  # the directory's name since the first release


class StateDirError(OSError):
    """The state directory cannot be written (or locked)."""


@dataclass(frozen=True)
class PodRecord:
    container_id: str
    ifname: str
    netns: str
    address: str
    ipam_type: str
    subnet: str = ""        # as the IPAM result gave it
    gateway: str = ""
    k8s_namespace: str = ""
    k8s_pod: str = ""
    network: str = ""       # the network configuration's name
    host_mac: str = ""      # the endpoint's MACs once it is up (a repeated ADD returns them)
    pod_mac: str = ""


class PodRecords:
    """The records of one node, one JSON file each."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, RECORDS_DIR)

    def _path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.dir, f"{attachment_hash(container_id, ifname)[:24]}.json")

    def save(self, record: PodRecord) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            atomic_write(self._path(record.container_id, record.ifname), json.dumps(asdict(record)), sync=False)
        except OSError as e:
            raise StateDirError(e.errno, f"cannot write the pod record in {self.dir}: {e.strerror}") from e

    def get(self, container_id: str, ifname: str) -> PodRecord | None:
        try:
            with open(self._path(container_id, ifname)) as f:
                return PodRecord(**json.load(f))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def remove(self, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(container_id, ifname))

    def all(self) -> list[PodRecord]:
        return json_records(self.dir, PodRecord)
