"""Public IPs on secondary addresses (SPEC §7), as the cloud gives them: the
fabric maps a public IP of the lab's internet (``plan.public_ip``: 198.19.k.j
for 10.3.k.j) one to one to a VM's secondary address.

Inbound, what the internet sends to the public IP is translated to the
secondary address (DNAT, arriving from the link ``inet`` only: the public IP
is the internet's view). Outbound, new flows from the secondary address to
the internet leave with the public IP as their source (SNAT), and the
fabric's rule that only VM primaries reach the internet (``inet_not_primary``)
lets the address by (a set in the fabric's table, declared empty by
``fabric.ruleset``). The translations are a table of their own, there only
while some address has a public IP (NAT turns on conntrack for everything the
fabric forwards); ``assign`` and ``unassign`` replace it and refill the set in
one transaction. Replies go back through conntrack; flows open when an
address loses its public IP are not kept.

The VM's instance metadata document lists the public IP (``publicIpAddress``,
served by ``vnetdp.lab.nmagent``), which is where vnetdp learns it
(``vnetdp.public_ips``); the documents are the lab's record of what is assigned.
"""
from __future__ import annotations

import ipaddress
import json
import os

from vnetdp.files import atomic_write
from vnetdp.lab import nmagent
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns

FABRIC_TABLE, SOURCES = "vnd_fabric_fwd", "public_sources"   # fabric.ruleset's table, and its set
#: in the fabric's table: the secondary addresses that have a public IP
DECLARATIONS = [f"  set {SOURCES} {{ type ipv4_addr; }}"]
TABLE = "vnd_public_ip"   # the translations, only while there are any (NAT turns on conntrack)

IPv4 = ipaddress.IPv4Address


class PublicIpError(ValueError):
    pass


def _document_path(plan: P.Plan, vm: P.Vm) -> str:
    return os.path.join(plan.dir, vm.name, nmagent.METADATA_FILE)


def _documents(plan: P.Plan) -> list[tuple[str, dict]]:
    out = []
    for path in (_document_path(plan, vm) for vm in plan.all_vms):
        with open(path) as f:
            out.append((path, json.load(f)))
    return out


def _entries(doc: dict) -> list[dict]:
    return [e for interface in doc["interface"] for e in interface["ipv4"]["ipAddress"]]


def assigned(plan: P.Plan) -> dict[IPv4, IPv4]:
    """Secondary address -> its public IP, as the VMs' metadata documents list them."""
    return {IPv4(e["privateIpAddress"]): IPv4(e["publicIpAddress"])
            for _, doc in _documents(plan) for e in _entries(doc) if e["publicIpAddress"]}


def ruleset(mapping: dict[IPv4, IPv4]) -> str:
    """``mapping`` (secondary address -> public IP) in force, in one
    transaction: the fabric's set refilled, the translations' table replaced
    (none when ``mapping`` is empty)."""
    privates = ", ".join(map(str, mapping))
    lines = [f"flush set ip {FABRIC_TABLE} {SOURCES}", f"table ip {TABLE} {{}}", f"delete table ip {TABLE}"]
    if mapping:
        inbound = ", ".join(f"{public} : {private}" for private, public in mapping.items())
        outbound = ", ".join(f"{private} : {public}" for private, public in mapping.items())
        lines += [f"add element ip {FABRIC_TABLE} {SOURCES} {{ {privates} }}",
                  f"table ip {TABLE} {{",
                  "  chain inbound {", "    type nat hook prerouting priority dstnat; policy accept;",
                  f'    iifname "inet" dnat to ip daddr map {{ {inbound} }}', "  }",
                  "  chain outbound {", "    type nat hook postrouting priority srcnat; policy accept;",
                  f'    oifname "inet" snat to ip saddr map {{ {outbound} }}', "  }", "}"]
    return "\n".join(lines) + "\n"


def _locate(plan: P.Plan, private: IPv4) -> tuple[str, dict, dict]:
    """The metadata document (path, document) listing the secondary address
    ``private``, and its entry there."""
    for path, doc in _documents(plan):
        for entry in _entries(doc)[1:]:   # the first is the primary, the VM's own
            if entry["privateIpAddress"] == str(private):
                return path, doc, entry
    raise PublicIpError(f"{private} is no secondary address of a lab VM (VM k's are 10.3.k.1 and up)")


def _enforce(plan: P.Plan, mapping: dict[IPv4, IPv4]) -> None:
    in_ns(plan.fabric, ["nft", "-f", "-"], stdin=ruleset(mapping))


def assign(plan: P.Plan, private: IPv4) -> IPv4:
    """Give the secondary address ``private`` its public IP: the fabric maps
    it first, then the VM's metadata document says so. Returns the public IP."""
    path, doc, entry = _locate(plan, private)
    public = P.public_ip(private)
    _enforce(plan, {**assigned(plan), private: public})
    entry["publicIpAddress"] = str(public)
    atomic_write(path, json.dumps(doc, indent=1))
    return public


def unassign(plan: P.Plan, private: IPv4) -> None:
    """Take the public IP away: the metadata document first, then the fabric."""
    path, doc, entry = _locate(plan, private)
    if not entry["publicIpAddress"]:
        raise PublicIpError(f"{private} has no public IP")
    entry["publicIpAddress"] = ""
    atomic_write(path, json.dumps(doc, indent=1))
    _enforce(plan, assigned(plan))
