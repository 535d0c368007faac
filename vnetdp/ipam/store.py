"""The IPAM state file: the pools and which attachment holds which address.

One JSON file in the state directory, changed only inside ``transaction()``:
an exclusive ``flock`` on a lock file beside it, and an atomic write, so a
crash leaves either the old or the new file. A corrupt or empty file is never
replaced by an empty state: every call reports it (a copy is kept aside for
the operator) until ``rebuild`` writes a good one.

Beside it, one lease file per allocated address (``ipam-leases/<address>``,
as host-local keeps one file per IP): IPAM's own record of who holds what,
from which ``leases()`` rebuilds a lost state without any other plugin.

Every allocation has one owner: a CNI attachment (``cni``, the default, and
what files from before owners were recorded hold) or a Docker endpoint
(``docker``, given by the Docker IPAM driver, ``vnetdp.docker``). Lookups and
releases name the owner they act for, so neither side's DEL, GC or release
ever touches the other's addresses.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vnetdp.files import atomic_write, fsync_dir, json_records
from vnetdp.ipam.errors import PoolExhausted, StateCorrupt, StateIoError
from vnetdp.ipam.sources import Pool
from vnetdp.locks import flocked

STATE_FILE = "ipam.json"
LEASES_DIR = "ipam-leases"
CNI = "cni"        # owner: a CNI attachment (container ID, ifname)
DOCKER = "docker"  # owner: a Docker endpoint (vnetdp.docker)


@dataclass(frozen=True)
class Allocation:
    container_id: str
    ifname: str
    address: str
    subnet: str
    gateway: str
    time: float
    network: str = ""       # the configuration's name ("" before records carried it)
    owner: str = CNI        # CNI or DOCKER (files from before owners were recorded: CNI)

    def to_json(self) -> dict:
        """As stored (state and lease): the owner only when it is not CNI, so a
        CNI allocation is written as before owners existed."""
        data = dict(vars(self))  # flat: asdict's deep copy costs more than the whole write
        if data["owner"] == CNI:
            del data["owner"]
        return data

    def of_network(self, network: str) -> bool:
        """True when CNI network ``network`` owns this allocation (a CNI one
        without a name: any); never for another owner's (Docker's)."""
        return self.owner == CNI and (not self.network or self.network == network)


@dataclass
class State:
    pools: list[dict] = field(default_factory=list)   # subnet, gateway, addresses
    allocations: list[Allocation] = field(default_factory=list)
    cursor: dict[str, str] = field(default_factory=dict)  # subnet -> last address given
    refreshed: float = 0.0

    @classmethod
    def from_json(cls, data: dict) -> State:
        state = cls(list(data["pools"]), [Allocation(**a) for a in data["allocations"]],
                    dict(data.get("cursor", {})), float(data.get("refreshed", 0)))
        for pool in state.pools:  # validates the addresses (inet_pton: strict dotted quads, and fast)
            ipaddress.IPv4Network(pool["subnet"])
            for a in pool["addresses"]:
                socket.inet_pton(socket.AF_INET, a)
        return state

    def copy(self) -> State:
        """A copy that later changes to this state leave alone (allocations are immutable)."""
        return State([dict(p) for p in self.pools], list(self.allocations), dict(self.cursor), self.refreshed)

    def to_json(self) -> dict:
        return {"version": 1, "pools": self.pools, "allocations": [a.to_json() for a in self.allocations],
                "cursor": self.cursor, "refreshed": self.refreshed}

    # --- queries -------------------------------------------------------
    def find(self, container_id: str, ifname: str, owner: str = CNI) -> Allocation | None:
        return next((a for a in self.allocations
                     if a.container_id == container_id and a.ifname == ifname and a.owner == owner), None)

    def holder(self, address: str) -> Allocation | None:
        """The allocation of ``address``, whoever owns it."""
        return next((a for a in self.allocations if a.address == address), None)

    def free(self) -> int:
        used = {a.address for a in self.allocations}
        return sum(1 for p in self.pools for a in p["addresses"] if a not in used)

    # --- changes -------------------------------------------------------
    def refresh(self, pools: list[Pool], now: float) -> None:
        """Take the source's pools. Addresses in use stay allocated even when the
        source no longer lists them; they are just not handed out again."""
        self.pools = [{"subnet": str(p.subnet), "gateway": str(p.gateway),
                       "addresses": [str(a) for a in p.addresses]} for p in pools]
        self.refreshed = now

    def allocate(self, container_id: str, ifname: str, now: float, network: str = "",
                 owner: str = CNI, subnet: str | None = None) -> Allocation:
        """The address of (container_id, ifname): the one it holds, or the next
        free one after the last given (round robin, so a released address is
        not handed out again at once). An empty container ID holds nothing
        (Docker asks for an address before it names the endpoint): each such
        call takes a new address. ``subnet``: from that pool only."""
        held = self.find(container_id, ifname, owner) if container_id else None
        if held:
            return held
        used = {a.address for a in self.allocations}
        pools = [p for p in self.pools if subnet is None or p["subnet"] == subnet]
        for pool in pools:
            addrs = pool["addresses"]
            last = self.cursor.get(pool["subnet"])
            start = addrs.index(last) + 1 if last in addrs else 0
            for address in addrs[start:] + addrs[:start]:
                if address not in used:
                    alloc = Allocation(container_id, ifname, address, pool["subnet"], pool["gateway"], now,
                                       network, owner)
                    self.allocations.append(alloc)
                    self.cursor[pool["subnet"]] = address
                    return alloc
        total = sum(len(p["addresses"]) for p in pools)
        subnets = ", ".join(p["subnet"] for p in pools) or "none"
        raise PoolExhausted(f"no free address: all {total} secondary addresses in {subnets} are in use",
                            "add secondary IP addresses to the VM's NIC (the pool is refreshed on the next ADD)")

    def release(self, container_id: str, ifname: str | None = None, owner: str = CNI) -> list[Allocation]:
        gone = [a for a in self.allocations if a.container_id == container_id and a.owner == owner
                and (ifname is None or a.ifname == ifname)]
        self.allocations = [a for a in self.allocations if a not in gone]
        return gone

    def keep_only(self, valid: set[tuple[str, str]], network: str) -> list[Allocation]:
        """Release every allocation of ``network`` whose (container ID, ifname)
        is not in ``valid``; other networks' allocations are not GC's to touch."""
        gone = [a for a in self.allocations
                if a.of_network(network) and (a.container_id, a.ifname) not in valid]
        self.allocations = [a for a in self.allocations if a not in gone]
        return gone


def _is_address(name: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(name)) == name
    except ValueError:
        return False


class Store:
    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.leases_dir = os.path.join(state_dir, LEASES_DIR)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(flocked(self.path + ".lock"))
            except OSError as e:
                raise StateIoError(f"cannot lock IPAM state in {self.dir}: {e}",
                                   "the state directory must exist and be writable")
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """The state under the lock; written back (atomically) if changed."""
        with self._locked():
            state = self._load()
            before = state.copy()
            yield state
            if state != before:
                self._write(state, before.allocations)

    def rebuild(self, allocations: Iterable[Allocation]) -> State:
        """Replace the state (also a corrupt one) with these allocations and no
        pools (the next ADD refreshes them from the source)."""
        with self._locked():
            state = State(allocations=list(allocations))
            self._write(state, self.leases())
            return state

    def leases(self) -> list[Allocation]:
        """The allocations the lease files record (unreadable ones, and files
        not named by an address such as a crash's temp file, skipped)."""
        return json_records(self.leases_dir, Allocation, _is_address)

    def _load(self) -> State:
        try:
            with open(self.path) as f:
                raw = f.read()
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise StateIoError(f"cannot read IPAM state {self.path}: {e}")
        try:
            return State.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: inet_pton's refusal
            aside = self._keep_aside(raw)
            raise StateCorrupt(f"IPAM state {self.path} is {'empty' if not raw.strip() else 'corrupt'} ({e}); "
                               f"a copy is kept at {aside}",
                               "no address is handed out until it is rebuilt: run "
                               f"'vnetdp ipam rebuild --state-dir {self.dir}' or a CNI GC")

    def _keep_aside(self, raw: str) -> str:
        """A copy of the bad file for the operator (one per distinct content)."""
        aside = f"{self.path}.corrupt-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
        if not os.path.exists(aside):
            shutil.copyfile(self.path, aside)
        return aside

    def _write(self, state: State, before: list[Allocation]) -> None:
        """The state file, then the lease files of what changed since ``before``."""
        try:
            atomic_write(self.path, json.dumps(state.to_json()))  # no indent: C encoder, ~10x faster on a full pool
            self._sync_leases(before, state.allocations)
        except OSError as e:
            raise StateIoError(f"cannot write IPAM state {self.path}: {e}")

    def _sync_leases(self, before: list[Allocation], after: list[Allocation]) -> None:
        os.makedirs(self.leases_dir, exist_ok=True)
        gone = set(before) - set(after)
        for lease in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.leases_dir, lease.address))
        if gone:
            fsync_dir(self.leases_dir)
        for lease in set(after) - set(before):
            atomic_write(os.path.join(self.leases_dir, lease.address), json.dumps(lease.to_json()))
