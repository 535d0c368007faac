"""The datapaths under test, each built in its own lab namespaces.

- ``limit``: the lab's own limit, against which every ratio is stated. The
  client is a lab VM's namespace with no pods and no host datapath, attached
  to the fabric router like any VM: the same servers (peer VM, internet
  host), the same router and nftables as every other topology, nothing of a
  node's datapath in between. Its local path is one veth to a namespace of
  its own, as close as two pods on one host can be.
- ``bridge-nf`` and ``bridge``: the classic datapath, as Azure's bridge mode
  builds it on a lab VM: a Linux bridge with the NIC enslaved and the primary
  IP on it, per pod ebtables MAC translation (snat to the NIC MAC out of the
  NIC, dnat to the pod MAC in, ARP replies for pod addresses) and iptables
  MASQUERADE for traffic leaving the VNet (pods route it via the host).
  ``bridge-nf`` with br_netfilter on in the VM (bridge-nf-call-iptables=1,
  as on a node running kube-proxy: every bridged frame passes the IPv4
  netfilter hooks and conntrack), ``bridge`` with it off.
- ``vnetdp-tc`` and ``vnetdp-xdp``: pods attached through the installed CNI
  plugin, with the NIC side at tc or XDP.
- ``direct``: a veth straight between two namespaces, no router, no
  nftables: a footnote, not a limit any topology here can reach.

Lab topologies offer the same three paths (pod to a peer VM over the NIC,
pod to pod on one host, pod to the internet host); ``direct`` offers one,
``veth``. Counters prove that a datapath carried the traffic.
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
from dataclasses import dataclass

from vnetdp.lab import cni, fabric
from vnetdp.lab import plan as P
from vnetdp.lab.observe import counters as bpf_counters
from vnetdp.lab.shell import in_ns, ip_batch, run
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.lab.topology import Lab

PATHS = ("vnet", "local", "internet")
VETH = "veth"
VETH_SERVER_IP = "10.9.0.2"
BRIDGE_NF = "/proc/sys/net/bridge"


@dataclass(frozen=True)
class Endpoints:
    client_ns: str
    server_ns: str
    server_ip: str


class Unavailable(Exception):
    """This machine cannot build the topology as claimed; the run goes on without it."""


class Topology:
    name = ""
    paths: tuple[str, ...] = PATHS
    hosts_pods = False  # whether idle pods can be added (the scale runs)

    def up(self) -> None: ...
    def down(self) -> None: ...
    def path(self, name: str) -> Endpoints: ...
    def add_idle_pods(self, count: int) -> None: ...

    def counters(self) -> int:
        """Packets this datapath's own machinery has handled so far."""
        return 0

    def describe(self) -> dict:
        """What the run records of how this topology was built."""
        return {}


def _links(ns: str) -> list[str]:
    return sorted(re.findall(r"^\d+: ([\w-]+)", in_ns(ns, ["ip", "-o", "link"]).stdout, re.M))


def _veth(a_ns: str, a_name: str, b_ns: str) -> None:
    """A veth from ``a_name`` in ``a_ns`` (10.9.0.1/24) to eth0 in ``b_ns`` (VETH_SERVER_IP)."""
    ip_batch(a_ns, [f"link add {a_name} type veth peer name eth0 netns {b_ns}", "link set lo up",
                    f"link set {a_name} up", f"addr add 10.9.0.1/24 dev {a_name}"])
    ip_batch(b_ns, ["link set lo up", "link set eth0 up", f"addr add {VETH_SERVER_IP}/24 dev eth0"])


class Direct(Topology):
    name = "direct"
    paths = (VETH,)

    def __init__(self) -> None:
        lab_id = secrets.token_hex(2)
        self.a, self.b = f"vnd{lab_id}-direct-a", f"vnd{lab_id}-direct-b"

    def up(self) -> None:
        run(["ip", "netns", "add", self.a])
        run(["ip", "netns", "add", self.b])
        _veth(self.a, "eth0", self.b)

    def down(self) -> None:
        for ns in (self.a, self.b):
            run(["ip", "netns", "del", ns], check=False)

    def path(self, name: str) -> Endpoints:
        return Endpoints(self.a, self.b, VETH_SERVER_IP)

    def describe(self) -> dict:
        """Links of the client namespace: lo and the veth, nothing else."""
        return {"client_links": _links(self.a)}


class LabTopology(Topology):
    """A one-VM lab; the client is pod 1 and the local server pod 2."""

    hosts_pods = True
    runs_vnetdp = False  # on its VM

    def __init__(self, pool: int = 250, **node_settings) -> None:
        self.lab = Lab(P.Plan(secrets.token_hex(2), vms=1, pool=pool), self.runs_vnetdp, **node_settings)
        self.vm = self.lab.plan.vm(1)
        self.pods = 0

    def down(self) -> None:
        self.lab.down()

    def pod_ip(self, j: int) -> str: ...
    def add_pod(self, j: int) -> None: ...

    @property
    def client_ns(self) -> str:
        return self.lab.plan.pod_ns(self.vm, 1)

    def local_ip(self) -> str:
        return self.pod_ip(2)

    def path(self, name: str) -> Endpoints:
        p = self.lab.plan
        if name == "local":  # asked once up: a pod's address comes from its IPAM
            return Endpoints(self.client_ns, p.pod_ns(self.vm, 2), self.local_ip())
        server = {"vnet": (p.peer, str(P.PEER_IP)), "internet": (p.inet, str(P.INET_IP))}[name]
        return Endpoints(self.client_ns, *server)

    def describe(self) -> dict:
        """Whether vnetdp is installed on the VM (its node settings written)."""
        return {"vnetdp_installed": os.path.exists(NodeSettingsFile(self.lab.plan.state_dir(self.vm)).path)}

    def add_idle_pods(self, count: int) -> None:
        """Pods beyond 1 and 2 until ``count`` pods exist."""
        while self.pods < count:
            self.add_pod(self.pods + 1)


class Limit(LabTopology):
    name = "limit"
    hosts_pods = False
    LOCAL_LINK = "local0"

    def up(self) -> None:
        self.lab.up()
        local_ns = self.lab.plan.pod_ns(self.vm, 2)
        run(["ip", "netns", "add", local_ns])
        _veth(self.vm.ns, self.LOCAL_LINK, local_ns)

    @property
    def client_ns(self) -> str:
        return self.vm.ns

    def local_ip(self) -> str:
        return VETH_SERVER_IP

    def describe(self) -> dict:
        """The client's links: its NIC to the fabric, the local veth, lo. Nothing of
        vnetdp runs on the VM."""
        return {**super().describe(), "client_links": _links(self.vm.ns)}


class Vnetdp(LabTopology):
    runs_vnetdp = True

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


def br_netfilter_problem() -> str | None:
    """Why br_netfilter cannot be switched in one lab namespace alone here, or None.

    The bridge-nf-call-* sysctls belong to each network namespace since Linux
    5.3 (before, one global value), and exist while br_netfilter is built in or
    loaded; each new namespace starts with them on. The harness never loads the
    module: ``modprobe br_netfilter`` registers its hooks for every bridge of
    every namespace, the root's included (docker0 and the like), with the
    defaults on, so it would change how the machine's own bridges filter. An
    operator who accepts that loads it before the run."""
    release = tuple(int(n) for n in re.findall(r"\d+", platform.release())[:2])
    if release < (5, 3):
        return f"kernel {platform.release()}: bridge-nf-call-* are one global setting before Linux 5.3"
    if not os.path.isdir(BRIDGE_NF):
        return ("br_netfilter is neither built in nor loaded; the harness does not load it, as that changes how "
                "every bridge on the machine filters (modprobe br_netfilter before the run to measure it)")
    return None


class Bridge(LabTopology):
    BRIDGE = "azure0"

    def __init__(self, pool: int = 250, netfilter: bool = False) -> None:
        super().__init__(pool)
        self.netfilter = netfilter
        self.name = "bridge-nf" if netfilter else "bridge"

    def up(self) -> None:
        problem = br_netfilter_problem()
        if problem and (self.netfilter or os.path.isdir(BRIDGE_NF)):  # off without the module needs nothing
            raise Unavailable(problem)
        self.lab.up()
        vm, primary = self.vm, f"{self.vm.primary}/{P.VNET.prefixlen}"
        if os.path.isdir(BRIDGE_NF):  # the VM's namespace only (see br_netfilter_problem)
            in_ns(vm.ns, ["sysctl", "-qw", *(f"net.bridge.bridge-nf-call-{t}={int(self.netfilter)}"
                                              for t in ("iptables", "ip6tables", "arptables"))])
        ip_batch(vm.ns, [f"link add {self.BRIDGE} type bridge", f"link set {self.BRIDGE} address {vm.mac}",
                         f"addr del {primary} dev eth0", f"link set eth0 master {self.BRIDGE}",
                         f"link set {self.BRIDGE} up", f"addr add {primary} dev {self.BRIDGE}",
                         f"route add default via {P.GATEWAY} dev {self.BRIDGE}"])
        self._ebtables(["-A", "PREROUTING", "-p", "ARP", "-i", "azv+", "--arp-op", "Request",
                        "-j", "arpreply", "--arpreply-mac", P.GATEWAY_MAC])  # the rest of the VNet
        in_ns(vm.ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", str(P.VNET), "!", "-d", str(P.VNET),
                      "-j", "MASQUERADE"])
        self.add_idle_pods(2)

    def describe(self) -> dict:
        """bridge-nf-call-iptables as the VM's namespace reads it (None: no br_netfilter)."""
        proc = in_ns(self.vm.ns, ["cat", f"{BRIDGE_NF}/bridge-nf-call-iptables"], check=False)
        return {**super().describe(),
                "bridge_nf_call_iptables": int(proc.stdout) if proc.returncode == 0 else None}

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
    kinds = {"limit": lambda: Limit(pool), "bridge-nf": lambda: Bridge(pool, netfilter=True),
             "bridge": lambda: Bridge(pool), "vnetdp-tc": lambda: Vnetdp("tc", pool),
             "vnetdp-xdp": lambda: Vnetdp("xdp", pool), "direct": Direct}
    return [kinds[n]() for n in names]
