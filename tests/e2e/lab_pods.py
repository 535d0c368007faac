"""Pods that one end-to-end test makes on VM 2 of the session's lab, through
the installed plugin, and what the node holds for each (the ``pods`` fixture
in conftest removes them afterwards)."""
from __future__ import annotations

import ipaddress
import itertools
import socket

from pyroute2 import IPRoute

from vnetdp import naming, netns
from vnetdp.ipam.store import Store
from vnetdp.lab import cni
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns, run
from vnetdp.network.records import PodRecords

_slots = itertools.count(100)


class Pods:
    """Pod namespaces on VM 2 for one test, removed (DEL, then the netns) afterwards."""

    def __init__(self, lab) -> None:
        self.lab, self.vm, self.made = lab, lab.plan.vm(2), []

    def netns(self) -> str:
        ns = self.lab.plan.pod_ns(self.vm, next(_slots))
        run(["ip", "netns", "add", ns])
        self.made.append(ns)
        return ns

    def call(self, command: str, ns: str, conf: dict | None = None, **kw) -> cni.CniCall:
        return self.lab.cni(self.vm, command, conf, container_id=ns, pod_netns=netns.path_of(ns), **kw)

    def add(self, conf: dict | None = None, **kw) -> tuple[str, cni.CniCall]:
        ns = self.netns()
        call = self.call("ADD", ns, conf, **kw)
        assert call.ok, (call.output, call.stderr)
        return ns, call

    def cleanup(self) -> None:
        for ns in self.made:
            self.call("DEL", ns)
            run(["ip", "netns", "del", ns], check=False)

    # what the node holds for a container
    def allocation(self, ns: str) -> str | None:
        with Store(self.lab.plan.state_dir(self.vm)).transaction() as state:
            held = state.find(ns, "eth0")
        return held.address if held else None

    def host_link(self, ns: str) -> bool:
        with netns.enter(self.vm.ns), IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=naming.host_ifname(ns, "eth0")))

    def map_entry(self, address: str) -> bool:
        with netns.enter(self.vm.ns), self.lab.node(self.vm).maps() as m:
            return m.endpoint(address) is not None

    def record(self, ns: str):
        return PodRecords(self.lab.plan.state_dir(self.vm)).get(ns, "eth0")

    def gone(self, ns: str, address: str) -> bool:
        return (self.allocation(ns) is None and not self.host_link(ns) and not self.map_entry(address)
                and self.record(ns) is None)

    def intact(self, ns: str, address: str) -> bool:
        return (self.allocation(ns) == address and self.host_link(ns) and self.map_entry(address)
                and self.record(ns) is not None)


def address_of(call: cni.CniCall) -> str:
    return str(ipaddress.IPv4Interface(call.output["ips"][0]["address"]).ip)


def host_port_serves(lab, vm, ns: str, address: str, container_port: int, host_port: int) -> None:
    """A listener in pod ``ns`` on ``address:container_port`` is reached from the
    peer VM at the VM's primary IP and ``host_port``, and sees the peer's address."""
    with netns.enter(ns):
        server = socket.create_server((address, container_port))
    with server:
        client = in_ns(lab.plan.peer, ["python3", "-c",
                                       f"import socket; socket.create_connection(('{vm.primary}', {host_port}), 3)"],
                       check=False)
        server.settimeout(3)
        conn, peer = server.accept()
        conn.close()
    assert client.returncode == 0, client.stderr
    assert peer[0] == str(P.PEER_IP)
