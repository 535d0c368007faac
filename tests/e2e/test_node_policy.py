"""Node policy (`vnetdp policy`): security rules in the NSG model, enforced by
vnetdp's own datapath on VM 2 with local switching on (the l2bridge fast
path), from a pod's first packet, without losing allowed traffic when rules
change."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab_pods import address_of
from vnetdp.lab import probe
from vnetdp.lab import plan as P
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import in_ns

PORT = 8080


def deny_tcp(name: str, port: int = PORT) -> dict:
    """A group as the fabric takes it (vnetdp-lab nsg apply): one inbound Deny of TCP ``port``."""
    rule = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "*", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": str(port)}
    return {"name": name, "properties": {"securityRules": [{"name": f"deny-{port}", "properties": rule}]}}


class Policy:
    """`vnetdp policy` on VM 2, as an operator runs it."""

    def __init__(self, lab, tmp_path) -> None:
        self.lab, self.vm, self.tmp, self.applied = lab, lab.plan.vm(2), tmp_path, set()

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return in_ns(self.vm.ns, [sys.executable, "-m", "vnetdp.cli", "policy", *args,
                                  "--state-dir", self.lab.plan.state_dir(self.vm),
                                  "--bpffs-dir", self.lab.node_bpffs_dir(self.vm)], check=check)

    def apply(self, doc: dict) -> None:
        path = self.tmp / f"{doc['name']}.json"
        path.write_text(json.dumps(doc))
        self.run("apply", str(path), "--address", str(P.VNET))
        self.applied.add(doc["name"])

    def delete(self, name: str) -> None:
        self.run("delete", name)
        self.applied.discard(name)

    def show(self) -> dict:
        return json.loads(self.run("show", "--json").stdout)


@pytest.fixture
def policy(lab, tmp_path) -> Iterator[Policy]:
    p = Policy(lab, tmp_path)
    yield p
    for name in list(p.applied):
        p.run("delete", name, check=False)


def local_pod(lab) -> tuple[str, str]:
    """The lab's pod on VM 2: the client, on the same VM as the tests' pods."""
    vm = lab.plan.vm(2)
    return lab.plan.pod_ns(vm, 1), str(lab.pod_address(vm, 1))


def test_the_fabrics_nsg_file_blocks_same_vm_pod_to_pod_with_local_switching_on(lab, pods, policy):
    client_ns, client = local_pod(lab)
    ns, added = pods.add()
    server = address_of(added)
    assert probe.tcp_connect(client_ns, ns, server, PORT) == client
    before = counters(lab, pods.vm)
    policy.apply(deny_tcp("no-8080"))
    assert probe.tcp_connect(client_ns, ns, server, PORT) is None
    assert probe.tcp_connect(client_ns, ns, server, PORT + 1) == client  # allowed, replies included
    assert probe.ping(client_ns, server).ok
    assert probe.ping(ns, str(P.INET_IP)).ok  # through SNAT, the reply let back in
    moved = counters(lab, pods.vm) - before
    assert moved["DROP_POLICY"] >= 1 and moved["FWD_LOCAL"] > 0  # switched on the node, never via the fabric
    denied = [d for d in policy.show()["drops"] if d["address"] == server]
    assert denied and denied[0]["ruleSet"] == "no-8080" and denied[0]["rule"] == "deny-8080"
    policy.delete("no-8080")
    assert probe.tcp_connect(client_ns, ns, server, PORT) == client


def syns_seen(ns: str) -> int:
    """SYNs to PORT that reached the pod's own stack (an nft counter there)."""
    out = in_ns(ns, ["nft", "-j", "list", "counter", "inet", "vndsyn", "syn"]).stdout
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)


def test_a_pod_added_after_the_policy_never_sees_a_denied_syn(lab, pods, policy):
    policy.apply(deny_tcp("first-packet"))
    client_ns, _ = local_pod(lab)
    ns, added = pods.add()
    server = address_of(added)
    in_ns(ns, ["nft", "-f", "-"], stdin=(
        "table inet vndsyn {\n  counter syn {\n  }\n  chain in {\n"
        "    type filter hook prerouting priority -300;\n"
        f'    tcp dport {PORT} tcp flags & (syn | ack) == syn counter name "syn"\n  }}\n}}\n'))
    assert probe.tcp_connect(client_ns, ns, server, PORT) is None
    assert probe.tcp_connect(lab.plan.peer, ns, server, PORT) is None  # from the VNet too
    assert syns_seen(ns) == 0
    assert probe.tcp_connect(client_ns, ns, server, PORT + 1) is not None  # the counter counts what arrives


def test_changing_the_rules_under_allowed_traffic_loses_nothing(lab, pods, policy):
    client_ns, _ = local_pod(lab)
    ns, added = pods.add()
    server = address_of(added)
    policy.apply(deny_tcp("changing"))
    count = 300
    ping = subprocess.Popen(["ip", "netns", "exec", client_ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.01",
                             "-W", "1", server], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for port in (PORT + 2, PORT + 3, PORT):
            doc = deny_tcp("changing", port)
            policy.apply(doc)
        out, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert probe.ping_result(subprocess.CompletedProcess(ping.args, ping.returncode, out, ""), count).ok, out
    assert probe.tcp_connect(client_ns, ns, server, PORT) is None  # the last rules hold
