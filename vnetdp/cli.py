"""The ``vnetdp`` command line.

Examples:
  vnetdp counters --bpffs-dir DIR        datapath counters of the node pinned at DIR
  vnetdp snat list --bpffs-dir DIR       the node's translated flows
  vnetdp snat sweep --bpffs-dir DIR [--every S]   expire idle and closed flows
  vnetdp install [--cni-bin-dir D] [--cni-conf-dir D] [--set KEY=VALUE]  CNI plugins + datapath
  vnetdp node show|set [KEY=VALUE ...] [--state-dir D]   the node's settings (enableSnat=false, ...)
  vnetdp ipam show|rebuild --state-dir DIR          the IPAM state of a node
  vnetdp agent [--state-dir D] [--bpffs-dir D]      node agent: CNI fast path, SNAT sweeps

The emulated lab and the benchmark are a separate command, ``vnetdp-lab``: this
one runs on nodes and never loads them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator

@contextlib.contextmanager
def _node_maps(args: argparse.Namespace) -> Iterator:
    """The maps pinned at --bpffs-dir, opened inside --netns if given."""
    from vnetdp import netns
    from vnetdp.datapath.bpffs import Bpffs
    from vnetdp.datapath.maps import Maps

    with netns.enter(args.netns) if args.netns else contextlib.nullcontext():
        with Maps(Bpffs(args.bpffs_dir).maps_dir) as m:
            yield m


def _counters(args: argparse.Namespace) -> int:
    from vnetdp.datapath.reasons import DIRECTIONS, describe

    with _node_maps(args) as m:
        rows = [{"ifindex": x.ifindex, "direction": DIRECTIONS.get(x.direction, x.direction),
                 "reason": describe(x.reason).name, "packets": x.packets, "bytes": x.bytes}
                for x in sorted(m.metrics(), key=lambda x: (x.ifindex, x.direction, x.reason))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['ifindex']:>6} {r['direction']:<9} {r['reason']:<24} {r['packets']:>10} {r['bytes']:>12}")
    return 0


def _snat(args: argparse.Namespace) -> int:
    from vnetdp.datapath import snat

    if args.action == "list":
        with _node_maps(args) as m:
            now = snat.now_ns()
            rows = [f.as_dict(now) for f in snat.flows(m)]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'proto':<5} {'pod':<21} {'translated':<21} {'remote':<21} {'idle s':>8}  state")
            for r in rows:
                state = "orphan" if r["orphan"] else "closing" if r["closing"] else "open"
                print(f"{r['proto']:<5} {r['pod']:<21} {r['translated']:<21} {r['remote']:<21} "
                      f"{r['idle_s']:>8}  {state}")
        return 0
    timeouts = snat.Timeouts(**{k: v for k, v in vars(args).items()
                                if k in snat.Timeouts.__dataclass_fields__ and v is not None})
    if not args.every:
        with _node_maps(args) as m:
            print(json.dumps(snat.sweep(m, timeouts).__dict__))
        return 0
    sweeper = snat.Sweeper(args.bpffs_dir, args.every, timeouts)
    while True:  # the maps are pinned with the node's first pod: until then it waits
        sweeper.sweep_if_due()
        time.sleep(sweeper.seconds_left())


def _install(args: argparse.Namespace) -> int:
    from vnetdp.install import install

    for item in install(args.cni_bin_dir, args.cni_conf_dir, args.state_dir, args.bpffs_dir,
                        args.ipam_url, compile_programs=not args.no_compile,
                        node_settings=dict(map(_setting, args.set)), cni_version=args.cni_version):
        print(f"installed {item}")
    return 0


def _rebuild_ipam(state_dir: str) -> tuple[str, int]:
    """IPAM's state from its own leases and the network plugin's pod records
    (a record wins: it was written after the address was handed out)."""
    from vnetdp import plugins
    from vnetdp.ipam.store import Allocation, Store
    from vnetdp.network.records import PodRecords

    store = Store(state_dir)
    held = {a.address: a for a in store.leases()}
    held.update({r.address: Allocation(r.container_id, r.ifname, r.address, r.subnet, r.gateway, time.time())
                 for r in PodRecords(state_dir).all() if r.ipam_type == plugins.IPAM})
    return store.path, len(store.rebuild(held.values()).allocations)


def _ipam(args: argparse.Namespace) -> int:
    from vnetdp.ipam.store import Store

    if args.action == "rebuild":
        path, count = _rebuild_ipam(args.state_dir)
        print(f"rebuilt {path}: {count} allocations from IPAM's leases and the node's pod records; "
              "pools are re-read on the next ADD")
        return 0
    with Store(args.state_dir).transaction() as state:
        print(json.dumps(state.to_json(), indent=2))
    return 0


def _setting(item: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (a bare word is a string; VALUE empty: the default)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"{item!r} is not KEY=VALUE")
    try:
        return key, json.loads(value) if value else None
    except ValueError:
        return key, value


def _node(args: argparse.Namespace) -> int:
    from vnetdp.datapath.node import Node, NodeSettings
    from vnetdp.datapath.settings import FIELDS, NodeSettingsFile

    file = NodeSettingsFile(args.state_dir)
    current = file.update(dict(map(_setting, args.settings))) if args.action == "set" else file.load()
    if args.action == "set":
        node = Node(NodeSettings(args.bpffs_dir, args.state_dir, **current))
        if node.programs.is_loaded():  # else the node's first pod applies them
            node.configure()
    shown = {name: current[f.attribute] for name, f in FIELDS.items()}
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        for name, value in shown.items():
            print(f"{name:<20} {json.dumps(value)}")
    return 0


def _agent(args: argparse.Namespace) -> int:
    from vnetdp.agent import server

    server.serve(args.state_dir, args.bpffs_dir, args.sweep_every)
    return 0


def _node_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bpffs-dir", required=True, help="the node's pin directory")
    parser.add_argument("--netns", help="the node's network namespace, if not this one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnetdp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    counters = sub.add_parser("counters", help="datapath counters of one node")
    _node_args(counters)
    counters.add_argument("--json", action="store_true")
    counters.set_defaults(func=_counters)
    snat = sub.add_parser("snat", help="the node's SNAT connection table")
    snat.add_argument("action", choices=["list", "sweep"])
    _node_args(snat)
    snat.add_argument("--json", action="store_true", help="list: as JSON")
    snat.add_argument("--every", type=float, help="sweep: repeat every this many seconds")
    for name in ("tcp", "tcp_closing", "udp", "icmp", "orphan", "embryonic"):
        snat.add_argument(f"--{name.replace('_', '-')}-timeout", dest=name, type=float,
                          help=f"sweep: idle seconds before a {name.replace('_', ' ')} flow expires")
    snat.set_defaults(func=_snat)
    from vnetdp.defaults import DEFAULT_BPFFS_DIR, DEFAULT_STATE_DIR
    from vnetdp.install import CONFLIST_VERSION
    inst = sub.add_parser("install", help="install the CNI plugins on this node")
    inst.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    inst.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    inst.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    inst.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    inst.add_argument("--ipam-url", help="interface document URL (default: the Azure host agent's)")
    inst.add_argument("--no-compile", action="store_true", help="leave compiling to the first ADD")
    inst.add_argument("--cni-version", default=CONFLIST_VERSION,
                      help=f"the conflist's cniVersion (default {CONFLIST_VERSION}: what containerd 1.6/1.7 "
                           "and the reference plugins accept; 1.1.0 only for runtimes that take it)")
    inst.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a node setting (see vnetdp node), repeatable")
    inst.set_defaults(func=_install)
    ipam = sub.add_parser("ipam", help="the node's IPAM state")
    ipam.add_argument("action", choices=["show", "rebuild"])
    ipam.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    ipam.set_defaults(func=_ipam)
    node = sub.add_parser("node", help="the node's settings (SNAT, VNet prefixes, NIC hook, ...)")
    node.add_argument("action", choices=["show", "set"])
    node.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                      help="set: config names with JSON values, e.g. enableSnat=false vnetCidrs='[\"10.3.0.0/16\"]'")
    node.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    node.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    node.add_argument("--json", action="store_true")
    node.set_defaults(func=_node)
    agent = sub.add_parser("agent", help="the node agent: CNI fast path and SNAT sweeps")
    agent.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    agent.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    agent.add_argument("--sweep-every", type=float, default=2.0, help="seconds between SNAT sweeps")
    agent.set_defaults(func=_agent)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error for operators
        print(f"vnetdp: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
