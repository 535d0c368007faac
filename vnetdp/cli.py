"""The ``vnetdp`` command line.

Examples:
  vnetdp lab up [--id ID] [--pool N]     build the emulated VNet (SPEC §7)
  vnetdp lab demo                        lab, pods, connectivity matrix, teardown
  vnetdp lab down [--id ID]              remove every trace of a lab
  vnetdp counters --bpffs-dir DIR        datapath counters of the node pinned at DIR
  vnetdp snat list --bpffs-dir DIR       the node's translated flows
  vnetdp snat sweep --bpffs-dir DIR [--every S]   expire idle and closed flows
  vnetdp install [--cni-bin-dir D] [--cni-conf-dir D]   CNI plugins + compiled datapath
  vnetdp ipam show|rebuild --state-dir DIR          the IPAM state of a node
  vnetdp agent [--state-dir D] [--bpffs-dir D]      node agent: CNI fast path, SNAT sweeps
  vnetdp bench [--quick] [--out DIR]                the benchmark (SPEC §8)
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import time
from collections.abc import Iterator

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
    while True:
        try:
            with _node_maps(args) as m:
                result = snat.sweep(m, timeouts)
        except OSError as e:
            # The maps are pinned with the node's first pod: a looping sweeper waits.
            if not args.every or e.errno != errno.ENOENT:
                raise
        else:
            if not args.every:
                print(json.dumps(result.__dict__))
                return 0
        time.sleep(args.every)


def _install(args: argparse.Namespace) -> int:
    from vnetdp.install import install

    for item in install(args.cni_bin_dir, args.cni_conf_dir, args.state_dir, args.bpffs_dir,
                        args.ipam_url, compile_programs=not args.no_compile):
        print(f"installed {item}")
    return 0


def _ipam(args: argparse.Namespace) -> int:
    from vnetdp.ipam import plugin
    from vnetdp.ipam.store import Store

    if args.action == "rebuild":
        state = plugin.rebuild(args.state_dir)
        print(f"rebuilt {Store(args.state_dir).path}: {len(state.allocations)} allocations "
              "from the node's attachments; pools are re-read on the next ADD")
        return 0
    with Store(args.state_dir).transaction() as state:
        print(json.dumps(state.to_json(), indent=2))
    return 0


def _agent(args: argparse.Namespace) -> int:
    from vnetdp import agent

    agent.serve(args.state_dir, args.bpffs_dir, args.sweep_every)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from bench import report, run

    results = run.run("quick" if args.quick else "full", args.out)
    print(report.markdown(results))
    print(f"written to {args.out}")
    return 0


def _node_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bpffs-dir", required=True, help="the node's pin directory")
    parser.add_argument("--netns", help="the node's network namespace, if not this one")


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
    _node_args(counters)
    counters.add_argument("--json", action="store_true")
    counters.set_defaults(func=_counters)
    snat = sub.add_parser("snat", help="the node's SNAT connection table")
    snat.add_argument("action", choices=["list", "sweep"])
    _node_args(snat)
    snat.add_argument("--json", action="store_true", help="list: as JSON")
    snat.add_argument("--every", type=float, help="sweep: repeat every this many seconds")
    for name in ("tcp", "tcp_closing", "udp", "icmp", "orphan"):
        snat.add_argument(f"--{name.replace('_', '-')}-timeout", dest=name, type=float,
                          help=f"sweep: idle seconds before a {name.replace('_', ' ')} flow expires")
    snat.set_defaults(func=_snat)
    from vnetdp.paths import DEFAULT_BPFFS_DIR, DEFAULT_STATE_DIR
    inst = sub.add_parser("install", help="install the CNI plugins on this node")
    inst.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    inst.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    inst.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    inst.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    inst.add_argument("--ipam-url", help="interface document URL (default: the Azure host agent's)")
    inst.add_argument("--no-compile", action="store_true", help="leave compiling to the first ADD")
    inst.set_defaults(func=_install)
    ipam = sub.add_parser("ipam", help="the node's IPAM state")
    ipam.add_argument("action", choices=["show", "rebuild"])
    ipam.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    ipam.set_defaults(func=_ipam)
    agent = sub.add_parser("agent", help="the node agent: CNI fast path and SNAT sweeps")
    agent.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    agent.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    agent.add_argument("--sweep-every", type=float, default=2.0, help="seconds between SNAT sweeps")
    agent.set_defaults(func=_agent)
    bench = sub.add_parser("bench", help="benchmark against the kernel bridge and a bare veth")
    bench.add_argument("--quick", action="store_true", help="under 5 minutes (default: full run, under 30)")
    bench.add_argument("--out", default="bench/results", help="directory for JSON, Markdown and charts")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error for operators
        print(f"vnetdp: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
