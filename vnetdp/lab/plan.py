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
INTERNET = ipaddress.IPv4Network("198.18.0.0/15")   # the lab's internet (the tag Internet)
PEERED_VNET = ipaddress.IPv4Network("10.4.0.0/16")  # the hub: a VNet peered with VNET
#: public IPs the fabric gives secondary addresses, in the lab's internet, away from INET_IP's /24
PUBLIC_IPS = ipaddress.IPv4Network("198.19.0.0/16")
LB_FRONTEND = ipaddress.IPv4Address("10.3.0.200")    # the internal load balancer's frontend address
NMAGENT_PORT = 8080   # the interface and instance metadata documents, on 127.0.0.1 in each VM
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


def public_ip(private: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """The public IP the lab gives secondary address 10.3.k.j: 198.19.k.j."""
    if private not in VNET:
        raise ValueError(f"{private} is not in the VNet {VNET}")
    return PUBLIC_IPS[int(private) - int(VNET.network_address)]


@dataclass(frozen=True)
class Host:
    """A VM without vnetdp, one address on one NIC: its fabric link and
    namespace role are both ``role``. ``forwards``: the NIC has IP forwarding
    enabled (the fabric lets it send other addresses), as an appliance's has."""

    role: str
    mac: str
    ip: ipaddress.IPv4Address
    subnet: str
    forwards: bool = False

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(SUBNETS[self.subnet].hosts())

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.ip}/{SUBNETS[self.subnet].prefixlen}")


VNET_SUBNET, HUB_SUBNET = "default", "hub"
#: subnet name -> prefix: the VNet's one subnet (every lab VM's), and the peered hub's
SUBNETS = {VNET_SUBNET: VNET, HUB_SUBNET: PEERED_VNET}
PEER = Host("peer", PEER_MAC, PEER_IP, VNET_SUBNET)
PEERED_VM = Host("peered", "00:0d:3a:00:01:04", ipaddress.IPv4Address("10.4.0.4"), HUB_SUBNET)
APPLIANCE = Host("nva", "00:0d:3a:00:01:c8", ipaddress.IPv4Address("10.4.0.200"), HUB_SUBNET, forwards=True)
HOSTS = (PEER, PEERED_VM, APPLIANCE)
#: what the tag VirtualNetwork stands for, in either VNet: its space and the peered one
VNET_SPACE = (VNET, PEERED_VNET)


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
        return self.ns(PEER.role)

    def host_ns(self, host: Host) -> str:
        return self.ns(host.role)

    @property
    def nics(self) -> list[str]:
        """Every NIC's fabric link: the VMs', then the other hosts'."""
        return [vm.name for vm in self.all_vms] + [h.role for h in HOSTS]

    def subnet_links(self, subnet: str) -> list[str]:
        """The fabric links of the NICs in ``subnet``."""
        vms = [vm.name for vm in self.all_vms] if subnet == VNET_SUBNET else []
        return vms + [h.role for h in HOSTS if h.subnet == subnet]

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
