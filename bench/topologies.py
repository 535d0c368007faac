"""The datapaths under test, each built in its own lab namespaces.

- ``direct``: a veth straight between client and server namespaces; no host
  in between, the limit.
- ``bridge``: the classic datapath, as Azure's bridge mode builds it on a
  lab VM: a Linux bridge with the NIC enslaved and the primary IP on it, per
  pod ebtables MAC translation (snat to the NIC MAC out of the NIC, dnat to
  the pod MAC in, ARP replies for pod addresses) and iptables MASQUERADE for
  traffic leaving the VNet (pods route it via the host).
- ``vnetdp-tc`` and ``vnetdp-xdp``: pods attached through the installed CNI
  plugin, with the NIC side at tc or XDP.

Every topology offers the same three paths (pod to a peer VM over the NIC,
pod to pod on one host, pod to the internet host) and counters that prove its
datapath carried the traffic.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from vnetdp.lab import cni, fabric
from vnetdp.lab import plan as P
from vnetdp.lab.observe import counters as bpf_counters
from vnetdp.lab.shell import in_ns, ip_batch, run
from vnetdp.lab.topology import Lab

PATHS = ("vnet", "local", "internet")


@dataclass(frozen=True)
class Endpoints:
    client_ns: str
    server_ns: str
    server_ip: str


class Topology:
    name = ""

    def up(self) -> None: ...
    def down(self) -> None: ...
    def path(self, name: str) -> Endpoints: ...
    def add_idle_pods(self, count: int) -> None: ...

    def counters(self) -> int:
        """Packets this datapath's own machinery has handled so far."""
        return 0


class Direct(Topology):
    name = "direct"

    def __init__(self) -> None:
        lab_id = secrets.token_hex(2)
        self.a, self.b = f"vnd{lab_id}-direct-a", f"vnd{lab_id}-direct-b"

    def up(self) -> None:
        run(["ip", "netns", "add", self.a])
        run(["ip", "netns", "add", self.b])
        ip_batch(self.a, [f"link add eth0 type veth peer name eth0 netns {self.b}", "link set lo up",
                          "link set eth0 up", "addr add 10.9.0.1/24 dev eth0"])
        ip_batch(self.b, ["link set lo up", "link set eth0 up", "addr add 10.9.0.2/24 dev eth0"])

    def down(self) -> None:
        for ns in (self.a, self.b):
            run(["ip", "netns", "del", ns], check=False)

    def path(self, name: str) -> Endpoints:
        return Endpoints(self.a, self.b, "10.9.0.2")

    def add_idle_pods(self, count: int) -> None:
        pass  # there is no host to hold pods

    def interfaces(self) -> list[str]:
        """Links of the client namespace: lo and the veth, nothing else."""
        return sorted(re.findall(r"^\d+: (\w+)", in_ns(self.a, ["ip", "-o", "link"]).stdout, re.M))


class LabTopology(Topology):
    """A one-VM lab with pods 1 and 2; idle pods are added from slot 3 on."""

    def __init__(self, pool: int = 250, **node_settings) -> None:
        self.lab = Lab(P.Plan(secrets.token_hex(2), vms=1, pool=pool), **node_settings)
        self.vm = self.lab.plan.vm(1)
        self.pods = 0

    def down(self) -> None:
        self.lab.down()

    def pod_ip(self, j: int) -> str: ...

    def path(self, name: str) -> Endpoints:
        p = self.lab.plan
        return {"vnet": Endpoints(p.pod_ns(self.vm, 1), p.peer, str(P.PEER_IP)),
                "local": Endpoints(p.pod_ns(self.vm, 1), p.pod_ns(self.vm, 2), self.pod_ip(2)),
                "internet": Endpoints(p.pod_ns(self.vm, 1), p.inet, str(P.INET_IP))}[name]

    def add_idle_pods(self, count: int) -> None:
        """Pods beyond 1 and 2 until ``count`` pods exist."""
        while self.pods < count:
            self.add_pod(self.pods + 1)


class Vnetdp(LabTopology):
    def __init__(self, nic_attach: str = "tc", pool: int = 250) -> None:
        super().__init__(pool, nicAttach=nic_attach)
        self.nic_attach = nic_attach
        self.name = f"vnetdp-{nic_attach}"
        self.conf = cni.network_config()

    def up(self) -> None:
        self.lab.up()
        if self.nic_attach == "xdp":
            fabric.finish_checksums(self.lab.plan, self.vm)
        self.add_idle_pods(2)

    def add_pod(self, j: int) -> None:
        self.lab.add_pod(self.vm, j, self.conf)
        self.pods = j

    def pod_ip(self, j: int) -> str:
        return str(self.lab.pod_address(self.vm, j))

    def counters(self) -> int:
        return sum(n for reason, n in bpf_counters(self.lab, self.vm).items() if reason.startswith("FWD_"))


class Bridge(LabTopology):
    name = "bridge"
    BRIDGE = "azure0"

    def up(self) -> None:
        self.lab.up()
        vm, primary = self.vm, f"{self.vm.primary}/{P.VNET.prefixlen}"
        ip_batch(vm.ns, [f"link add {self.BRIDGE} type bridge", f"link set {self.BRIDGE} address {vm.mac}",
                         f"addr del {primary} dev eth0", f"link set eth0 master {self.BRIDGE}",
                         f"link set {self.BRIDGE} up", f"addr add {primary} dev {self.BRIDGE}",
                         f"route add default via {P.GATEWAY} dev {self.BRIDGE}"])
        self._ebtables(["-A", "PREROUTING", "-p", "ARP", "-i", "azv+", "--arp-op", "Request",
                        "-j", "arpreply", "--arpreply-mac", P.GATEWAY_MAC])  # the rest of the VNet
        in_ns(vm.ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", str(P.VNET), "!", "-d", str(P.VNET),
                      "-j", "MASQUERADE"])
        self.add_idle_pods(2)

    def _ebtables(self, rule: list[str]) -> None:
        in_ns(self.vm.ns, ["ebtables", "-t", "nat", *rule])

    def pod_ip(self, j: int) -> str:
        return str(self.vm.secondaries(self.lab.plan.pool)[j - 1])

    def add_pod(self, j: int) -> None:
        """A pod as Azure's bridge mode plumbs it: on the bridge, MACs translated by ebtables."""
        vm, ns, ip = self.vm, self.lab.plan.pod_ns(self.vm, j), self.pod_ip(j)
        host, mac = f"azv{j}", f"02:42:0a:03:{j >> 8:02x}:{j & 0xff:02x}"
        run(["ip", "netns", "add", ns])
        ip_batch(vm.ns, [f"link add {host} type veth peer name eth0 netns {ns}",
                         f"link set {host} master {self.BRIDGE}", f"link set {host} up"])
        ip_batch(ns, ["link set lo up", f"link set eth0 address {mac}", "link set eth0 up",
                      f"addr add {ip}/{P.VNET.prefixlen} dev eth0",
                      # the VNet on the bridge; beyond it via the host, which masquerades
                      f"neigh replace {vm.primary} lladdr {vm.mac} dev eth0 nud permanent",
                      f"route add default via {vm.primary} dev eth0"])
        self._ebtables(["-A", "POSTROUTING", "-o", "eth0", "-s", mac, "-j", "snat", "--to-src", vm.mac,
                        "--snat-arp", "--snat-target", "ACCEPT"])
        self._ebtables(["-A", "PREROUTING", "-i", "eth0", "-p", "IPv4", "--ip-dst", ip, "-j", "dnat",
                        "--to-dst", mac, "--dnat-target", "ACCEPT"])
        self._ebtables(["-I", "PREROUTING", "1", "-p", "ARP", "--arp-op", "Request", "--arp-ip-dst", ip,
                        "-j", "arpreply", "--arpreply-mac", mac])
        self.pods = j

    def counters(self) -> int:
        """Packets the bridge's ports sent, and packets the NAT rules matched."""
        ports = json.loads(in_ns(self.vm.ns, ["ip", "-j", "-s", "link", "show", "master", self.BRIDGE]).stdout)
        masq = in_ns(self.vm.ns, ["iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-x", "-n"]).stdout
        ebt = in_ns(self.vm.ns, ["ebtables", "-t", "nat", "-L", "--Lc"]).stdout
        return sum(p["stats64"]["tx"]["packets"] for p in ports) + \
            sum(int(n) for n in re.findall(r"pcnt = (\d+)", ebt)) + \
            sum(int(line.split()[0]) for line in masq.splitlines()[2:] if "MASQUERADE" in line)


def build(names: list[str], pool: int = 250) -> list[Topology]:
    kinds = {"direct": Direct, "bridge": lambda: Bridge(pool), "vnetdp-tc": lambda: Vnetdp("tc", pool),
             "vnetdp-xdp": lambda: Vnetdp("xdp", pool)}
    return [kinds[n]() for n in names]

