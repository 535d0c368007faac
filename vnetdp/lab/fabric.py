"""The emulated cloud fabric: routing, ARP and the rules it enforces.

Enforcement is nftables inside the fabric namespace, with named counters so
tests and the demo can show what it dropped:
``<link>_bad_mac`` (source MAC not the NIC's), ``<link>_bad_ip`` (source IP not
one of the NIC's addresses), ``inet_not_primary`` (only VM primary IPs, and
secondary addresses with a public IP, reach the internet);
``inet_from_primary`` counts what does reach it. The fabric owns the internal
load balancer's frontend address (``fabric_lb``) and translates public IPs
(``fabric_public_ips``).
"""
from __future__ import annotations

import ipaddress
import json

from vnetdp.lab import fabric_public_ips, fabric_routes
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns, ip_batch, run


def _host_lines(link: str, mac: str, addrs: list[ipaddress.IPv4Address]) -> list[str]:
    """Route each address to ``link`` and deliver it to the NIC's MAC."""
    lines = []
    for a in addrs:
        lines.append(f"route replace {a}/32 dev {link} scope link")
        lines.append(f"neigh replace {a} lladdr {mac} dev {link} nud permanent")
    return lines


def ruleset(members: dict[str, tuple[str, list[ipaddress.IPv4Address] | None]],
            primaries: list[ipaddress.IPv4Address]) -> str:
    """nft rules for links -> (NIC MAC, allowed source IPs; None: any, the NIC
    has IP forwarding enabled)."""
    out = ["table netdev vnd_fabric {"]
    for link, (mac, addrs) in members.items():
        decls = [f"  counter {link}_bad_mac {{}}"]
        checks = [f'    ether saddr != {mac} counter name "{link}_bad_mac" drop']
        if addrs is not None:
            elems = ", ".join(str(a) for a in addrs)
            decls += [f"  counter {link}_bad_ip {{}}", f"  set {link}_ips {{ type ipv4_addr; elements = {{ {elems} }} }}"]
            checks += [f'    ether type ip ip saddr != @{link}_ips counter name "{link}_bad_ip" drop',
                       f'    ether type arp arp saddr ip != @{link}_ips counter name "{link}_bad_ip" drop']
        out += [*decls, f"  chain {link}_in {{",
                f'    type filter hook ingress device "{link}" priority 0; policy accept;', *checks, "  }"]
    out.append("}")
    elems = ", ".join(str(a) for a in primaries)
    out += [f"table ip {fabric_public_ips.FABRIC_TABLE} {{", "  counter inet_not_primary {}", f"  counter {INET_FROM_PRIMARY} {{}}",
            f"  set primaries {{ type ipv4_addr; elements = {{ {elems} }} }}", *fabric_public_ips.DECLARATIONS,
            "  chain forward {", "    type filter hook forward priority 0; policy accept;",
            f'    oifname "inet" ip saddr != @primaries ip saddr != @{fabric_public_ips.SOURCES} '
            'counter name "inet_not_primary" drop',
            f'    oifname "inet" counter name "{INET_FROM_PRIMARY}"',
            "  }", "}"]
    return "\n".join(out) + "\n"


def build(plan: P.Plan) -> None:
    """Wire the fabric namespace to every VM, the other hosts and the internet."""
    fab = plan.fabric
    own = [*(next(s.hosts()) for s in P.SUBNETS.values()), P.LB_FRONTEND]  # the subnets' gateways, the LB's frontend
    lines = ["link set lo up", *(f"addr add {a}/32 dev lo" for a in own)]
    nics = {vm.name: (vm.mac, [vm.primary, *vm.secondaries(plan.pool)]) for vm in plan.all_vms}
    nics.update({h.role: (h.mac, [h.ip]) for h in P.HOSTS})
    for link, (mac, addrs) in nics.items():
        lines += [f"link set {link} up", *_host_lines(link, mac, addrs)]
    forwarding = {h.role for h in P.HOSTS if h.forwards}
    members = {link: (mac, None if link in forwarding else addrs) for link, (mac, addrs) in nics.items()}
    lines += ["link set inet up", f"addr add {P.INET_FABRIC_IP}/24 dev inet"]
    sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"]
    for link in members:
        sysctls += [f"net.ipv4.conf.{link}.proxy_arp=1", f"net.ipv4.conf.{link}.proxy_arp_pvlan=1",
                    f"net.ipv4.conf.{link}.rp_filter=0",
                    f"net.ipv4.neigh.{link}.proxy_delay=0"]  # the cloud answers at once
    in_ns(fab, ["sysctl", "-q", "-w", *sysctls])
    ip_batch(fab, lines + fabric_routes.rule_lines(plan))
    primaries = [vm.primary for vm in plan.all_vms] + [h.ip for h in P.HOSTS]
    in_ns(fab, ["nft", "-f", "-"], stdin=ruleset(members, primaries))


def finish_checksums(plan: P.Plan, vm: P.Vm) -> None:
    """Make the fabric hand ``vm`` finished checksums, as a real wire does.

    Between veths, TCP frames travel "checksum partial"; XDP redirection
    turns them into frames without that note and the pod drops them. Needed
    only when the VM's NIC runs XDP; it costs the fabric TSO toward that VM.
    """
    in_ns(plan.fabric, ["ethtool", "-K", vm.name, "tx", "off"])


INET_FROM_PRIMARY = "inet_from_primary"  # the one counter of packets let through


def counters(plan: P.Plan) -> dict[str, int]:
    """Packets each fabric rule counted, by counter name."""
    proc = in_ns(plan.fabric, ["nft", "-j", "list", "counters"])
    out = {}
    for item in json.loads(proc.stdout)["nftables"]:
        c = item.get("counter")
        if c:
            out[c["name"]] = c["packets"]
    return out


def drops(plan: P.Plan) -> dict[str, int]:
    """Packets each enforcing rule dropped, by counter name."""
    return {k: v for k, v in counters(plan).items() if k != INET_FROM_PRIMARY}


def link_veth(ns_a: str, name_a: str, mac_a: str, ns_b: str, name_b: str, mac_b: str) -> None:
    """A veth pair created directly inside two lab namespaces."""
    run(["ip", "link", "add", name_a, "netns", ns_a, "address", mac_a, "type", "veth",
         "peer", "name", name_b, "netns", ns_b, "address", mac_b])
