"""The ``vnetdp`` command line.

Examples:
  vnetdp counters --bpffs-dir DIR        datapath counters of the node pinned at DIR
  vnetdp snat list --bpffs-dir DIR       the node's translated flows
  vnetdp snat sweep --bpffs-dir DIR [--every S]   expire idle and closed flows
  vnetdp install [--cni-bin-dir D] [--cni-conf-dir D] [--set KEY=VALUE]  CNI plugins + datapath
  vnetdp node show|set [KEY=VALUE ...] [--state-dir D]   the node's settings (enableSnat=false, ...)
  vnetdp ipam show|rebuild --state-dir DIR          the IPAM state of a node
  vnetdp agent [--state-dir D] [--bpffs-dir D]      node agent: CNI fast path, SNAT sweeps
  vnetdp docker-plugin [--socket PATH] [--ipam-url URL]   Docker network + IPAM driver (libnetwork)
  vnetdp status [--json]                            health, build, attachments, pools, SNAT fill
  vnetdp endpoints [--json]                         pods: records, addresses, veths, counters
  vnetdp stats [--watch S [--count N]] [--json]     counters per endpoint and reason (rates)
  vnetdp metrics [--listen 127.0.0.1:9464 | --once] Prometheus metrics of the node
  vnetdp monitor [--trace] [--pod P] [--reason R ...] [--json] [--count N] [--seconds S]   live drops (traces)
  (status, endpoints, stats, metrics, monitor: --state-dir D --bpffs-dir D --netns NS for a node elsewhere)
  vnetdp reconcile [--fix] [--json]                 records, IPAM, map, veths, attachments: differences
  vnetdp upgrade [--cflags F ...] [--rollback] [--json]   swap in the sources' build, no packet lost
  vnetdp policy apply FILE [--pod NS/NAME|NS/*] [--address PREFIX] [--docker-network ID] [--node-default]
  vnetdp policy show [--json] | policy delete NAME  security rules (NSG model) the datapath enforces

The emulated lab and the benchmark are a separate command, ``vnetdp-lab``: this
one runs on nodes and never loads them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

def _seconds(text: str) -> float:
    """An argument that is a time to wait, finite and above zero (a loop
    without one spins)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite time above zero")
    return value


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
                        node_settings=dict(map(_setting, args.set)), cni_version=args.cni_version,
                        python_entry=args.python_entry):
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
    from vnetdp.files import atomic_write

    file = NodeSettingsFile(args.state_dir)
    if args.action == "set":
        before = open(file.path).read() if os.path.exists(file.path) else None
        current = file.update(dict(map(_setting, args.settings)))
        node = Node(NodeSettings(args.bpffs_dir, args.state_dir, **current))
        try:
            if node.programs.is_loaded():  # else the node's first pod applies them
                node.configure()
        except Exception as e:  # the node keeps what it had: settings it cannot apply are not its
            if before is None:
                os.unlink(file.path)
            else:
                atomic_write(file.path, before)
            raise RuntimeError(f"the node cannot take these settings, nothing changed: {e}") from e
    else:
        current = file.load()
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


def _docker_plugin(args: argparse.Namespace) -> int:
    import logging

    from vnetdp.docker import plugin

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ipam = {"environment": "file", "file": args.ipam_file} if args.ipam_file else \
        {"environment": "azure", **({"url": args.ipam_url} if args.ipam_url else {})}
    plugin.serve(args.socket, args.state_dir, args.bpffs_dir, ipam)
    return 0


@contextlib.contextmanager
def _in_netns(args: argparse.Namespace) -> Iterator[None]:
    """Inside --netns for netlink and attachment queries (pins are paths)."""
    from vnetdp import netns

    with netns.enter(args.netns) if args.netns else contextlib.nullcontext():
        yield


def _ops_dirs(args: argparse.Namespace):
    from vnetdp.ops.inspect import NodeDirs

    return NodeDirs(args.state_dir, args.bpffs_dir)


def _status(args: argparse.Namespace) -> int:
    from vnetdp.ops import inspect, render

    with _in_netns(args):
        found = inspect.status(_ops_dirs(args))
    found["netns"] = args.netns
    print(json.dumps(found, indent=2) if args.json else render.status(found))
    return 0 if found["healthy"] else 2


def _endpoints(args: argparse.Namespace) -> int:
    from vnetdp.ops import inspect, render

    dirs = _ops_dirs(args)
    with _in_netns(args):
        names = inspect.link_names()
        with inspect.open_maps(dirs) as m:
            rows = inspect.endpoints(dirs, m, names)
    print(json.dumps(rows, indent=2) if args.json else render.endpoints(rows))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from vnetdp.ops import render, stats

    dirs = _ops_dirs(args)
    with _in_netns(args):
        if not args.watch:
            found = stats.sample(dirs)
            print(json.dumps(found, indent=2) if args.json else render.stats(found))
            return 0
        try:
            for found in stats.watch(dirs, args.watch, args.count):
                print(json.dumps(found) if args.json else render.stats(found) + "\n", flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from vnetdp.ops import metrics

    listen = None if args.once else metrics.check_listen(args.listen, args.allow_remote)
    with _in_netns(args):
        collector = metrics.NodeCollector(metrics.NodeSource(_ops_dirs(args)))
        if listen is None:
            print(metrics.exposition(collector), end="")
            return 0
        try:
            metrics.serve(collector, *listen)
        except KeyboardInterrupt:
            pass
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from vnetdp.ops import monitor

    try:
        filt = monitor.Filter(monitor.parse_reasons(args.reason), args.trace, args.pod)
        with _in_netns(args):
            monitor.run(_ops_dirs(args), filt, lambda line: print(line, flush=True), json_lines=args.json,
                        count=args.max_events, seconds=args.seconds)
    except monitor.MonitorError as e:
        print(f"vnetdp monitor: {e}", file=sys.stderr)
        return 1
    return 0


def _add_monitor(sub) -> None:
    """``monitor`` (SPEC §10): drops, and with --trace forwarded packets, as they happen."""
    mon = sub.add_parser(
        "monitor", help="live datapath events: every drop with its reason (--trace: forwarded packets too)",
        description="Stream datapath events from the node's ring buffer: every drop with its reason, and with "
                    "--trace every packet forwarded (into a pod, to the VNet, to the host; the host's own traffic "
                    "from the NIC only with --reason PASS_NIC). Addresses and ports are the packet's as it leaves "
                    "the program (after SNAT: translated). One monitor per node at a time; it switches events on "
                    "when it starts and off when it ends (Ctrl-C, SIGTERM); while off the datapath pays one map "
                    "read per packet.")
    _ops_args(mon)
    mon.add_argument("--trace", action="store_true", help="forwarded packets too, not only drops")
    mon.add_argument("--pod", metavar="NAME|ADDRESS",
                     help="only this pod's events: namespace/name, name, container ID, host veth or address")
    mon.add_argument("--reason", nargs="+", default=[], metavar="NAME",
                     help="only these reasons (e.g. DROP_SPOOF_IP FWD_LOCAL); forwarding reasons imply --trace")
    mon.add_argument("--count", type=int, dest="max_events", metavar="N", help="stop after N events")
    mon.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    mon.set_defaults(func=_monitor)


def _ops_args(parser: argparse.ArgumentParser, json_output: bool = True) -> None:
    """The node to inspect: defaults are this node's (VNETDP_STATE_DIR, VNETDP_BPFFS_DIR)."""
    from vnetdp import defaults

    parser.add_argument("--state-dir", default=defaults.state_dir(), help="the node's state directory")
    parser.add_argument("--bpffs-dir", default=defaults.bpffs_dir(), help="the node's pin directory")
    parser.add_argument("--netns", help="the node's network namespace, if not this one (a lab VM)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="JSON for machines instead of tables")


def _reconcile(args: argparse.Namespace) -> int:
    from vnetdp.ops import reconcile

    with _in_netns(args):
        result = reconcile.reconcile(args.state_dir, args.bpffs_dir, fix=args.fix)
    print(json.dumps(result.as_dict(), indent=2) if args.json else reconcile.render(result))
    return 0 if result.clean else 1


def _upgrade(args: argparse.Namespace) -> int:
    from vnetdp.datapath.loader import IncompatibleLayout
    from vnetdp.ops import upgrade

    with _in_netns(args):
        try:
            report = upgrade.upgrade(args.state_dir, args.bpffs_dir, tuple(args.cflags), rollback=args.rollback)
        except (IncompatibleLayout, upgrade.UpgradeError) as e:
            if args.json:
                comparison = getattr(e, "comparison", None)  # IncompatibleLayout's: both versions
                print(json.dumps({"ok": False, "refused": str(e),
                                  "layout": comparison.as_dict() if comparison else None}, indent=2))
            else:
                print(f"vnetdp upgrade: refused: {e}", file=sys.stderr)
            return 1
    print(json.dumps(report.as_dict(), indent=2) if args.json else upgrade.render(report))
    return 0 if report.ok else 1


def _policy(args: argparse.Namespace) -> int:
    from vnetdp.datapath.bpffs import Bpffs
    from vnetdp.policy import enforce, report, store

    maps_dir = Bpffs(args.bpffs_dir).maps_dir
    if args.action == "show":
        found = report.show(args.state_dir, maps_dir)
        print(json.dumps(found, indent=2) if args.json else report.render(found))
        return 0
    if args.action == "apply":
        selectors = store.Selectors.parse(args.pod, args.address, args.docker_network, args.node_default)
        document = store.read_document(args.file)
        done = enforce.apply(args.state_dir, maps_dir, document, selectors)
        what = f"rule set {document['name']} applied to {selectors.describe()}"
    else:
        done = enforce.delete(args.state_dir, maps_dir, args.name)
        what = f"rule set {args.name} deleted"
    if done is None:
        print(f"{what}; no datapath on this node yet: its first pod gets it")
    else:
        print(f"{what}; {len(done.endpoints)} endpoints have a rule set, "
              f"{done.flows_removed} flows the new rules deny forgotten")
    return 0


def _add_policy(sub) -> None:
    """``policy`` (SPEC §11): rule sets in the NSG model, enforced per endpoint by the datapath."""
    from vnetdp import defaults

    pol = sub.add_parser("policy", help="security rules (network security groups) the datapath enforces per pod")
    actions = pol.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="put a group in force (replacing one of its name) for the endpoints "
                                             "selected; a bad file is refused whole")
    apply.add_argument("file", help="a network security group as JSON, in the cloud's format")
    apply.add_argument("--pod", action="append", default=[], metavar="NS/NAME",
                       help="pods by namespace and name, or every pod of a namespace (NS/*); repeatable")
    apply.add_argument("--address", action="append", default=[], metavar="PREFIX",
                       help="endpoints whose address a prefix holds (the longest prefix wins); repeatable")
    apply.add_argument("--docker-network", action="append", default=[], metavar="ID",
                       help="the endpoints of a Docker network (its ID, 12 digits or more); repeatable")
    apply.add_argument("--node-default", action="store_true", help="every endpoint nothing else selects")
    delete = actions.add_parser("delete", help="remove a rule set")
    delete.add_argument("name")
    show = actions.add_parser("show", help="rule sets, each endpoint's, and the packets each rule denied")
    show.add_argument("--json", action="store_true")
    for parser in (apply, delete, show):
        parser.add_argument("--state-dir", default=defaults.state_dir(), help="the node's state directory")
        parser.add_argument("--bpffs-dir", default=defaults.bpffs_dir(), help="the node's pin directory")
        parser.set_defaults(func=_policy)


def _join_cflags(argv: list[str]) -> list[str]:
    """``--cflags -DX=1`` as ``--cflags=-DX=1``: argparse takes a value that
    starts with a dash for an option."""
    out, it = [], iter(argv)
    for a in it:
        out.append(a)
        if a == "--cflags":
            value = next(it, None)
            if value is not None:
                out[-1] = f"--cflags={value}"
    return out


def _add_day_two(sub) -> None:
    """``reconcile`` and ``upgrade`` (SPEC §10)."""
    rec = sub.add_parser("reconcile", help="compare records, IPAM, endpoint map, veths and attachments (--fix repairs)")
    _ops_args(rec)
    rec.add_argument("--fix", action="store_true", help="repair what can be repaired, then look again")
    rec.set_defaults(func=_reconcile)
    upg = sub.add_parser("upgrade", help="replace the node's programs in place with the sources' build (or --rollback)")
    _ops_args(upg)
    upg.add_argument("--cflags", action="append", default=[], metavar="FLAG",
                     help="a compile flag of the new build (repeatable), e.g. --cflags -DVND_MAX_SNAT=262144")
    upg.add_argument("--rollback", action="store_true", help="go back to the previous build (kept pinned)")
    upg.set_defaults(func=_upgrade)


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
    snat.add_argument("--every", type=_seconds, help="sweep: repeat every this many seconds")
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
    inst.add_argument("--python-entry", action="store_true",
                      help="install the plugins' Python entry point even where a C compiler could build the "
                           "compiled one (cni/vnetdp.c), which spares each call the Python start-up")
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
    agent.add_argument("--sweep-every", type=_seconds, default=2.0, help="seconds between SNAT sweeps")
    agent.set_defaults(func=_agent)
    from vnetdp import defaults
    from vnetdp.docker import DEFAULT_SOCKET
    docker = sub.add_parser("docker-plugin", help="the Docker network and IPAM driver (libnetwork remote plugin)")
    docker.add_argument("--socket", default=DEFAULT_SOCKET, help=f"where Docker finds it (default {DEFAULT_SOCKET})")
    docker.add_argument("--state-dir", default=defaults.state_dir(), help="the node's state (shared with CNI)")
    docker.add_argument("--bpffs-dir", default=defaults.bpffs_dir(), help="the node's pin directory")
    source = docker.add_mutually_exclusive_group()
    source.add_argument("--ipam-url", help="interface document URL (default: VNETDP_IPAM_URL, else the Azure "
                                           "host agent's), as the CNI plugins read it")
    source.add_argument("--ipam-file", help="the interface document in a file (XML or JSON) instead")
    docker.set_defaults(func=_docker_plugin)
    status = sub.add_parser("status", help="the node's health: build, attachments, agent, pools, SNAT fill")
    _ops_args(status)
    status.set_defaults(func=_status)
    endpoints = sub.add_parser("endpoints", help="the node's pods: records, addresses, veths, counters")
    _ops_args(endpoints)
    endpoints.set_defaults(func=_endpoints)
    stats = sub.add_parser("stats", help="datapath counters per endpoint and reason")
    _ops_args(stats)
    stats.add_argument("--watch", type=float, metavar="SECONDS", help="print rates every SECONDS")
    stats.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N reports")
    stats.set_defaults(func=_stats)
    metrics = sub.add_parser("metrics", help="Prometheus metrics of the node (datapath, pools, SNAT, CNI calls)")
    _ops_args(metrics, json_output=False)
    metrics.add_argument("--listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                         help="where to serve /metrics (default 127.0.0.1:9464; loopback unless --allow-remote)")
    metrics.add_argument("--allow-remote", action="store_true", help="serve on a non-loopback address")
    metrics.add_argument("--once", action="store_true",
                         help="print the exposition text once and exit (node_exporter's textfile collector)")
    metrics.set_defaults(func=_metrics)
    _add_monitor(sub)
    _add_day_two(sub)
    _add_policy(sub)
    args = parser.parse_args(_join_cflags(sys.argv[1:] if argv is None else argv))
    if getattr(args, "count", None) is not None and not getattr(args, "watch", None):
        parser.error("--count needs --watch")
    try:
        return args.func(args)
    except Exception as e:  # a clear one-line error for operators
        print(f"vnetdp: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
