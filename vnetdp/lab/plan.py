"""The lab's address plan and names (SPEC §7), as data."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

VNET = ipaddress.IPv4Network("10.3.0.0/16")
GATEWAY = ipaddress.IPv4Address("10.3.0.1")
GATEWAY_MAC = "12:34:56:78:9a:bc"
PEER_IP = ipaddress.IPv4Address("10.3.0.100")
PEER_MAC = "00:0d:3a:00:00:64"
INET_IP = ipaddress.IPv4Address("198.18.0.1")
INET_FABRIC_IP = ipaddress.IPv4Address("198.18.0.254")
NMAGENT_PORT = 8080
LAB_ROOT = "/run/vnetdp-lab"


@dataclass(frozen=True)
class Vm:
    k: int
    ns: str

    @property
    def name(self) -> str:
        return f"vm{self.k}"

    @property
    def mac(self) -> str:
        return f"00:0d:3a:00:00:{self.k:02x}"

    @property
    def primary(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"10.3.0.{3 + self.k}")

    def secondaries(self, pool: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address(f"10.3.{self.k}.{i}") for i in range(1, pool + 1)]


@dataclass(frozen=True)
class Plan:
    """Names and addresses of one lab instance; ``lab_id`` keeps labs apart."""

    lab_id: str = ""
    vms: int = 2
    pool: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.pool <= 250:
            raise ValueError("pool must be 1..250 secondary addresses per VM")
        if not 1 <= self.vms <= 9:
            raise ValueError("vms must be 1..9")

    @property
    def prefix(self) -> str:
        return f"vnd{self.lab_id}-"

    def ns(self, role: str) -> str:
        return self.prefix + role

    @property
    def fabric(self) -> str:
        return self.ns("fab")

    @property
    def inet(self) -> str:
        return self.ns("inet")

    @property
    def peer(self) -> str:
        return self.ns("peer")

    def vm(self, k: int) -> Vm:
        return Vm(k, self.ns(f"vm{k}"))

    @property
    def all_vms(self) -> list[Vm]:
        return [self.vm(k) for k in range(1, self.vms + 1)]

    def pod_ns(self, vm: Vm, j: int) -> str:
        return self.ns(f"{vm.name}-pod{j}")

    @property
    def dir(self) -> str:
        return f"{LAB_ROOT}/{self.lab_id or 'default'}"

    def bpffs_dir(self, vm: Vm) -> str:
        """The VM's bpffs mount; its node's pins live in a ``vnetdp`` directory inside."""
        return f"{self.dir}/{vm.name}/bpffs"

    def state_dir(self, vm: Vm) -> str:
        return f"{self.dir}/{vm.name}/state"
