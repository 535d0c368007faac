"""The ``vnetdp-lab`` command: the emulated VNet and the benchmark, for a checkout.

Examples:
  vnetdp-lab up [--id ID] [--vms N] [--pool N]     build the emulated VNet (SPEC §7)
  vnetdp-lab demo [--id ID] [--pool N] [--docker]  lab, pods, connectivity matrix, teardown
  vnetdp-lab docker-demo [--id ID] [--pool N]      the lab, one Docker container's rows, teardown
  vnetdp-lab down [--id ID]                        remove every trace of a lab
  vnetdp-lab nsg apply FILE [--nic vm1] [--subnet default]   a security group on NICs/subnets
  vnetdp-lab nsg show | nsg delete NAME            the groups the fabric enforces
  vnetdp-lab route apply FILE --subnet default     a route table (user-defined routes)
  vnetdp-lab route clear --subnet default          the subnet's routes back to the system's
  vnetdp-lab lb apply FILE | lb show | lb delete NAME   the internal load balancer (frontend 10.3.0.200)
  vnetdp-lab public-ip assign|remove ADDRESS | public-ip show   public IPs on secondary addresses
  vnetdp-lab bench [--quick] [--out DIR] [--profile]  the benchmark (SPEC §8), from the checkout's bench/

Nodes run the product command, ``vnetdp``, which never loads the lab.
"""
from __future__ import annotations

import argparse
import json
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


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None


def _nsg(args: argparse.Namespace) -> int:
    from vnetdp.lab import fabric_nsg
    from vnetdp.lab.topology import running_plan
    from vnetdp.policy.nsg import Direction

    plan = running_plan(args.id)
    if args.action == "apply":
        try:
            a = fabric_nsg.apply(plan, _load_json(args.target), args.nic, args.subnet)
        except ValueError as e:   # the group or its attachment: say which file
            e.args = (f"{args.target}: {e}",)
            raise
        print(f"nsg {a.group.name}: {len(a.group.rules)} rules on {', '.join(a.nics + a.subnets)}")
    elif args.action == "delete":
        fabric_nsg.delete(plan, args.target)
        print(f"nsg {args.target} deleted")
    else:
        for a in fabric_nsg.attached(plan):
            print(f"{a.group.name}: NICs {list(a.nics)} subnets {list(a.subnets)}")
            for direction in Direction:
                for r in a.group.effective(direction):
                    print(f"  {r.priority:>5} {direction.value:<8} {r.access.value:<5} {r.protocol.value:<4} "
                          f"{','.join(r.source)} -> {','.join(r.destination)}  {r.name}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from vnetdp.lab import fabric_routes
    from vnetdp.lab.topology import running_plan

    plan = running_plan(args.id)
    if args.action == "apply":
        routes = fabric_routes.apply(plan, _load_json(args.target), args.subnet)
        print(f"{len(routes)} routes on {', '.join(args.subnet)}")
    else:
        fabric_routes.clear(plan, args.subnet)
    return 0


def _lb(args: argparse.Namespace) -> int:
    from vnetdp.lab import fabric_lb
    from vnetdp.lab.topology import running_plan

    plan = running_plan(args.id)
    if args.action == "apply":
        try:
            lb = fabric_lb.apply(plan, _load_json(args.target))
        except ValueError as e:   # the document: say which file
            e.args = (f"{args.target}: {e}",)
            raise
        print(f"load balancer {lb.name}: {', '.join(r.name for r in lb.rules)} on {P.LB_FRONTEND}")
        return 0
    lb = fabric_lb.applied(plan)
    if args.action == "delete":
        if lb is None or lb.name != args.target:
            raise fabric_lb.LbError(f"no load balancer {args.target!r} (applied: {lb.name if lb else 'none'})")
        fabric_lb.delete(plan)
        print(f"load balancer {lb.name} deleted")
        return 0
    health = fabric_lb.health(plan)
    print(f"load balancer {lb.name}" if lb else "no load balancer")
    for r in lb.rules if lb else ():
        up = fabric_lb.healthy(r, health)
        probe = f"probe {r.probe.name}: tcp {r.probe.port} every {r.probe.interval_s} s" if r.probe else "no probe"
        print(f"  {r.name}: tcp {r.frontend}:{r.frontend_port} -> backends :{r.backend_port} ({probe})")
        for b in r.backends:
            print(f"    {str(b):<15} {'in' if b in up else 'out'}")
    return 0


def _public_ip(args: argparse.Namespace) -> int:
    import ipaddress

    from vnetdp.lab import fabric_public_ips
    from vnetdp.lab.topology import running_plan

    plan = running_plan(args.id)
    if args.action == "show":
        for private, public in sorted(fabric_public_ips.assigned(plan).items()):
            print(f"{public} <-> {private}")
        return 0
    if not args.address:
        raise ValueError(f"public-ip {args.action} needs a VM's secondary address")
    private = ipaddress.IPv4Address(args.address)
    if args.action == "assign":
        print(f"{fabric_public_ips.assign(plan, private)} <-> {private}")
    else:
        fabric_public_ips.unassign(plan, private)
        print(f"{private} has no public IP")
    return 0


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

    results = run.run("quick" if args.quick else "full", args.out, profile=args.profile)
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
    nsg = sub.add_parser("nsg", help="network security groups the fabric enforces")
    _lab_id(nsg)
    nsg.add_argument("action", choices=["apply", "show", "delete"])
    nsg.add_argument("target", nargs="?", help="apply: the group's JSON file; delete: its name")
    nsg.add_argument("--nic", action="append", default=[], help="a NIC's fabric link (vm1, peer, ...)")
    nsg.add_argument("--subnet", action="append", default=[], help="a subnet (default, hub)")
    nsg.set_defaults(func=_nsg)
    route = sub.add_parser("route", help="route tables (user-defined routes) the fabric applies")
    _lab_id(route)
    route.add_argument("action", choices=["apply", "clear"])
    route.add_argument("target", nargs="?", help="apply: the route table's JSON file")
    route.add_argument("--subnet", action="append", required=True, help="a subnet (default, hub)")
    route.set_defaults(func=_route)
    lb = sub.add_parser("lb", help="the internal load balancer the fabric runs")
    _lab_id(lb)
    lb.add_argument("action", choices=["apply", "show", "delete"])
    lb.add_argument("target", nargs="?", help="apply: the load balancer's JSON file; delete: its name")
    lb.set_defaults(func=_lb)
    public_ip = sub.add_parser("public-ip", help="public IPs the fabric maps to secondary addresses")
    _lab_id(public_ip)
    public_ip.add_argument("action", choices=["assign", "remove", "show"])
    public_ip.add_argument("address", nargs="?", help="assign, remove: a VM's secondary address")
    public_ip.set_defaults(func=_public_ip)
    bench = sub.add_parser("bench", help="benchmark against the kernel bridge and a bare veth")
    bench.add_argument("--quick", action="store_true", help="under 5 minutes (default: full run, under 30)")
    bench.add_argument("--out", default="bench/results", help="directory for JSON, Markdown and charts")
    bench.add_argument("--profile", action="store_true",
                       help="also record perf per topology and report its top kernel symbols")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    if getattr(args, "action", None) in ("apply", "delete") and not args.target:
        parser.error(f"{args.command} {args.action} needs a {'name' if args.action == 'delete' else 'file'}")
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error, as the product command gives
        print(f"vnetdp-lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
