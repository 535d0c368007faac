"""Node policy's per-packet cost in ns at 1, 100 and 1000 rules (SPEC §11:
flat), with progcost's method: BPF_PROG_TEST_RUN with repeat on the real
programs in a private bpffs, every run's path checked in the counters.

A pod has a rule set of N rules: N-1 fillers, Inbound and Outbound by
turns, each naming its own host, subnet or port range (so the tables hold
them all), then, at the lowest priority, a deny of TCP port 80 from the
VNet, which the measured denials meet after every other rule. Cases: a
packet of a kept flow each way (a flow-table lookup), and a new flow denied,
from the NIC and from another pod (each run meets the rules: two trie
lookups, the candidates, the drop counters); the kept-flow packets without
any rule set (the switch off) are the baseline. The control plane too:
applying the set, and giving a new endpoint its set before its first packet
(what ADD adds), compiled and written for it, or reused.

    python -m bench.policy_cost [--repeat N] [--rules 1 100 1000]
"""
from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.progcost import GW_MAC, MAC, RUNS_PER_FRAME, Case, pod_ip, bench_node
from vnetdp.datapath import maps as M
from vnetdp.policy import enforce
from vnetdp.policy.store import Selectors

POD, OTHER, PEER, TTL = pod_ip(0), pod_ip(1), "10.3.0.100", 255


def _rule(name: str, priority: int, direction: str, access: str, protocol: str, remote: str, dports: str,
          local: str = "*") -> dict:
    source, destination = (remote, local) if direction == "Inbound" else (local, remote)
    return {"name": name, "properties": {
        "priority": priority, "direction": direction, "access": access, "protocol": protocol,
        "sourceAddressPrefix": source, "destinationAddressPrefix": destination,
        "sourcePortRange": "*", "destinationPortRange": dports}}


def _filler(i: int) -> dict:
    direction, priority, kind = ("Inbound", "Outbound")[i % 2], 100 + i // 2, i // 2 % 3
    if kind == 0:
        return _rule(f"host{i}", priority, direction, "Allow", "Tcp", f"198.18.{i // 250}.{i % 250 + 1}",
                     str(1000 + i))
    if kind == 1:
        return _rule(f"subnet{i}", priority, direction, "Deny", "Udp", f"172.{16 + i // 256}.{i % 256}.0/24", "*")
    return _rule(f"ports{i}", priority, direction, "Deny", "*", "Internet", f"{20000 + i * 10}-{20005 + i * 10}")


def group(rules: int) -> dict:
    """N rules: N-1 fillers, then the denial the measured new flows meet
    (for the pods' subnet only)."""
    last = _rule("deny-80-from-vnet", 4096, "Inbound", "Deny", "Tcp", "VirtualNetwork", "80", "10.3.1.0/24")
    return {"name": f"cost{rules}", "properties": {"securityRules": [*map(_filler, range(rules - 1)), last]}}


def _frame(src_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(Ether(src=src_mac, dst=MAC) / IP(src=src, dst=dst, ttl=TTL) / TCP(sport=sport, dport=dport))


KEPT = {  # the pod's flow with the peer: allowed by the defaults, kept from the first run on
    "pod-to-vnet, kept flow (from_container)": Case("from_container", _frame(MAC, POD, PEER, 40000, 80),
                                                    "FWD_VNET", RUNS_PER_FRAME),
    "vnet-to-pod, kept flow (from_nic)": Case("from_nic", _frame(GW_MAC, PEER, POD, 80, 40000), "FWD_TO_POD",
                                              RUNS_PER_FRAME),
    "vnet-to-pod, kept flow (from_nic_xdp)": Case("from_nic_xdp", _frame(GW_MAC, PEER, POD, 80, 40000),
                                                  "FWD_TO_POD", RUNS_PER_FRAME),
}
DENIED = {  # a new flow every run, to port 80
    "vnet-to-pod, denied (from_nic)": Case("from_nic", _frame(GW_MAC, PEER, POD, 40000, 80), "DROP_POLICY"),
    "pod-to-pod, denied by the receiver (from_container)": Case("from_container", _frame(MAC, OTHER, POD, 40000, 80),
                                                                "DROP_POLICY"),
}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _control_plane(state: str, m: M.Maps, doc: dict) -> dict[str, float]:
    """ms: apply the set to the pod; then two new endpoints in another
    subnet: the first's set is compiled and written (the denial is not its),
    the second reuses it."""
    found = {}
    start = time.perf_counter()
    enforce.apply(state, m.dir, doc, Selectors(addresses=(f"{POD}/32", "10.3.200.0/24")))
    found["apply"] = _ms(start)
    for what, newcomer in (("endpoint, its set compiled and written", "10.3.200.1"),
                           ("endpoint, its set reused", "10.3.200.2")):
        start = time.perf_counter()
        enforce.policy_for_endpoint(state, m, ipaddress.IPv4Address(newcomer))
        found[what] = _ms(start)
    return found


def measure(rule_counts: list[int], repeat: int = 200_000) -> list[dict]:
    """Rows of (case, rules, ns per packet); rules 0: no rule set. Control
    plane rows are in ms."""
    rows = []
    with bench_node([*KEPT.values(), *DENIED.values()]) as node, \
            tempfile.TemporaryDirectory(prefix="vnd-policy-cost-") as state:
        for ip in (POD, OTHER):   # both behind the runs' device (ifindex 1): either may send
            node.maps.put_endpoint(ip, M.Endpoint(1, MAC, MAC))
        for name, case in KEPT.items():
            rows.append({"case": name, "rules": 0, "ns_per_packet": node.measure(case, repeat)})
        for count in rule_counts:
            for name, ms in _control_plane(state, node.maps, group(count)).items():
                rows.append({"case": f"control plane: {name} (ms)", "rules": count, "ms": ms})
            for name, case in {**KEPT, **DENIED}.items():
                rows.append({"case": name, "rules": count, "ns_per_packet": node.measure(case, repeat)})
            enforce.delete(state, node.maps.dir, f"cost{count}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000, help="runs per measurement")
    parser.add_argument("--rules", type=int, nargs="+", default=[1, 100, 1000], help="rule set sizes")
    args = parser.parse_args(argv)
    counts = sorted(set(args.rules))
    by_case: dict[str, dict[int, float]] = {}
    for r in measure(counts, args.repeat):
        by_case.setdefault(r["case"], {})[r["rules"]] = r.get("ns_per_packet", r.get("ms"))
    width = max(map(len, by_case))
    print(f"{'ns/packet':<{width}} {'no rules':>11} " + " ".join(f"{f'{c} rules':>11}" for c in counts))
    for case, row in by_case.items():
        print(f"{case:<{width}} " + " ".join(f"{row.get(c, '-'):>11}" for c in [0, *counts]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
