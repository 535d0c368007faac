"""What the network plugin remembers per attachment (container ID, ifname):
the netns, the address and the runtime's pod name. Written before any
plumbing, removed after all of it is gone, so DEL and GC always know what to
undo, also after a crash or with the pod's namespace already deleted."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Record:
    container_id: str
    ifname: str
    netns: str
    address: str
    ipam_type: str
    subnet: str = ""        # as the IPAM result gave it
    gateway: str = ""
    k8s_namespace: str = ""
    k8s_pod: str = ""


class Attachments:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "attachments")

    def _path(self, container_id: str, ifname: str) -> str:
        key = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:24]
        return os.path.join(self.dir, f"{key}.json")

    def save(self, record: Record) -> None:
        os.makedirs(self.dir, exist_ok=True)
        path = self._path(record.container_id, record.ifname)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, container_id: str, ifname: str) -> Record | None:
        try:
            with open(self._path(container_id, ifname)) as f:
                return Record(**json.load(f))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def remove(self, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(container_id, ifname))

    def all(self) -> list[Record]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            if name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                    with open(os.path.join(self.dir, name)) as f:
                        records.append(Record(**json.load(f)))
        return records
