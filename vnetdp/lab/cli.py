"""The ``vnetdp-lab`` command: the emulated VNet and the benchmark, for a checkout.

Examples:
  vnetdp-lab up [--id ID] [--vms N] [--pool N]     build the emulated VNet (SPEC §7)
  vnetdp-lab demo [--id ID] [--pool N] [--docker]  lab, pods, connectivity matrix, teardown
  vnetdp-lab docker-demo [--id ID] [--pool N]      the lab, one Docker container's rows, teardown
  vnetdp-lab down [--id ID]                        remove every trace of a lab
  vnetdp-lab bench [--quick] [--out DIR]           the benchmark (SPEC §8), from the checkout's bench/

Nodes run the product command, ``vnetdp``, which never loads the lab.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnetdp.lab import plan as P


def _up(args: argparse.Namespace) -> int:
    from vnetdp.lab.topology import Lab

    lab = Lab(P.Plan(args.id, vms=args.vms, pool=args.pool))
    lab.up()
    print(f"lab up: namespaces {lab.plan.prefix}*, state in {lab.plan.dir}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from vnetdp.lab.topology import Lab

    for item in Lab(P.Plan(args.id)).down():
        print(f"removed {item}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vnetdp.lab.demo import run_demo

    return 0 if run_demo(args.id, args.pool, docker=args.docker) else 1


def _docker_demo(args: argparse.Namespace) -> int:
    from vnetdp.lab.demo import run_demo

    return 0 if run_demo(args.id, args.pool, pods=False, docker=True) else 1


def checkout_root() -> Path:
    """The checkout whose ``bench/`` holds the harness: bench/ is not shipped in the
    package, so an editable install finds it next to vnetdp/, else the current directory."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "bench" / "__init__.py").is_file():
            return root
    raise FileNotFoundError("the benchmark harness (bench/) is not installed with vnetdp: "
                            "run vnetdp-lab bench from a checkout")


def _bench(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(checkout_root()))
    from bench import report, run

    results = run.run("quick" if args.quick else "full", args.out)
    print(report.markdown(results))
    print(f"written to {args.out}")
    return 0


def _lab_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", default="", help="lab instance id (namespaces vnd<ID>-*)")


def _pool(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", type=int, default=30, help="secondary addresses per VM (1-250)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnetdp-lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the emulated VNet")
    _lab_id(up)
    up.add_argument("--vms", type=int, default=2)
    _pool(up)
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="remove every trace of a lab, also after a failed up")
    _lab_id(down)
    down.set_defaults(func=_down)
    demo = sub.add_parser("demo", help="lab, pods, connectivity matrix, counters, teardown")
    _lab_id(demo)
    _pool(demo)
    demo.add_argument("--docker", action="store_true",
                      help="also dockerd and vnetdp's plugin on VM 1: one container's rows in the matrix")
    demo.set_defaults(func=_demo)
    docker_demo = sub.add_parser("docker-demo", help="lab, pods, one Docker container on VM 1: its rows in the "
                                 "matrix, its address and IPAM owner, teardown")
    _lab_id(docker_demo)
    _pool(docker_demo)
    docker_demo.set_defaults(func=_docker_demo)
    bench = sub.add_parser("bench", help="benchmark against the kernel bridge and a bare veth")
    bench.add_argument("--quick", action="store_true", help="under 5 minutes (default: full run, under 30)")
    bench.add_argument("--out", default="bench/results", help="directory for JSON, Markdown and charts")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error, as the product command gives
        print(f"vnetdp-lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
