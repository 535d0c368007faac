"""The ``vnetdp`` command line.

Examples:
  vnetdp lab up [--id ID] [--pool N]     build the emulated VNet (SPEC §7)
  vnetdp lab demo                        lab, pods, connectivity matrix, teardown
  vnetdp lab down [--id ID]              remove every trace of a lab
  vnetdp counters --bpffs-dir DIR        datapath counters of the node pinned at DIR
"""
from __future__ import annotations

import argparse
import json
import sys

from vnetdp.lab import plan as P


def _lab(args: argparse.Namespace) -> int:
    from vnetdp.lab.demo import run_demo
    from vnetdp.lab.topology import Lab

    if args.action == "demo":
        return 0 if run_demo(args.id, args.pool) else 1
    lab = Lab(P.Plan(args.id, vms=args.vms, pool=args.pool))
    if args.action == "up":
        lab.up()
        print(f"lab up: namespaces {lab.plan.prefix}*, state in {lab.plan.dir}")
    else:
        for item in lab.down():
            print(f"removed {item}")
    return 0


def _counters(args: argparse.Namespace) -> int:
    from vnetdp import netns
    from vnetdp.datapath.bpffs import Bpffs
    from vnetdp.datapath.maps import Maps
    from vnetdp.datapath.reasons import DIRECTIONS, describe

    def read() -> list[dict]:
        with Maps(Bpffs(args.bpffs_dir).maps_dir) as m:
            return [{"ifindex": x.ifindex, "direction": DIRECTIONS.get(x.direction, x.direction),
                     "reason": describe(x.reason).name, "packets": x.packets, "bytes": x.bytes}
                    for x in sorted(m.metrics(), key=lambda x: (x.ifindex, x.direction, x.reason))]

    if args.netns:
        with netns.enter(args.netns):
            rows = read()
    else:
        rows = read()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['ifindex']:>6} {r['direction']:<9} {r['reason']:<24} {r['packets']:>10} {r['bytes']:>12}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnetdp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="the built-in emulated VNet")
    lab.add_argument("action", choices=["up", "down", "demo"])
    lab.add_argument("--id", default="", help="lab instance id (namespaces vnd<ID>-*)")
    lab.add_argument("--vms", type=int, default=2)
    lab.add_argument("--pool", type=int, default=30, help="secondary addresses per VM (1-250)")
    lab.set_defaults(func=_lab)
    counters = sub.add_parser("counters", help="datapath counters of one node")
    counters.add_argument("--bpffs-dir", required=True, help="the node's pin directory")
    counters.add_argument("--netns", help="the node's network namespace, if not this one")
    counters.add_argument("--json", action="store_true")
    counters.set_defaults(func=_counters)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error for operators
        print(f"vnetdp: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
