"""``vnetdp upgrade``: replace the node's programs without losing a packet (SPEC §5, §10).

1. The new build's map layouts are checked against the pinned maps'; a build
   that would misread them is refused, naming both layout versions.
2. The new build (the sources on disk with ``--cflags``) is compiled and
   pinned beside the running one, which stays pinned (``Programs.compile``).
3. Under the node's GC lock, exclusive (no CNI call in flight, new ones wait:
   an ADD can never attach the old build after the swap), and its node lock:
   a. the markers move: ``current`` names the new build, ``previous`` the one
      that ran (ADDs from now on attach the new build; a crash from here on
      is finished by running the command again, or by ``vnetdp reconcile --fix``);
   b. every attachment is swapped in place: the NIC, both hooks of every
      pod's host veth, the pods' XDP pass programs. A pinned tcx or XDP link
      gets ``BPF_LINK_UPDATE``, a clsact filter a ``replace`` with the same
      handle and prio: each hook runs the old program until the very moment
      it runs the new one.
4. Builds other than the current and the previous one are unpinned; the
   previous one stays for ``--rollback`` until the next upgrade.

``--rollback`` does 3 and 4 with the previous build as the target (pinned,
so nothing is compiled). Maps are pinned and shared by every build, so
endpoints, SNAT flows and counters carry on untouched.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute

from vnetdp import endpoint
from vnetdp.datapath import attach
from vnetdp.datapath.bpffs import CURRENT, PREVIOUS
from vnetdp.datapath.loader import Programs
from vnetdp.datapath.node import Node, node_for
from vnetdp.defaults import GC_LOCK
from vnetdp.locks import WAIT_S as LOCK_WAIT_S
from vnetdp.locks import flocked
from vnetdp.naming import is_host_ifname

#: The network plugin's locks in the state directory (vnetdp.network.commands,
#: vnetdp.datapath.node): GC and upgrades run alone, NIC changes one at a time.
NODE_LOCK = "node.lock"


class UpgradeError(Exception):
    """The upgrade cannot start (no previous build, no programs, ...)."""


@dataclass(frozen=True)
class Swap:
    """One hook of one device: the program it ran and the one it runs now."""

    device: str
    hook: str
    mechanism: str
    program: str
    old_id: int
    new_id: int


@dataclass
class Report:
    action: str                      # "upgrade" or "rollback"
    from_build: str | None
    to_build: str
    compiled: bool = False
    layout: dict | None = None       # layout_version.Comparison.as_dict() (upgrade only)
    replaced: list[Swap] = field(default_factory=list)
    unchanged: list[Swap] = field(default_factory=list)  # already the target's program
    missing: list[str] = field(default_factory=list)     # hooks with nothing of vnetdp's attached
    errors: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    previous: str | None = None      # the build --rollback would go back to
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        d = asdict(self)
        d["from"], d["to"] = d.pop("from_build"), d.pop("to_build")
        d["ok"] = self.ok
        return d


def running_build(node: Node, ipr: IPRoute) -> str | None:
    """The build the node runs: the marked one, or on a node pinned before
    markers existed, the pinned build whose program the NIC runs."""
    programs = node.programs
    marked = node.bpffs.marker(CURRENT)
    if marked and programs.is_pinned(marked):
        return marked
    try:
        nic = node.nic(ipr)
    except Exception:
        return None
    for hook in ("ingress", "xdp"):
        found = attach.attached(nic.index, hook, node.bpffs.link_pin(nic.name, hook), ipr)
        if found is not None:
            for build in node.bpffs.builds():
                if found.prog_id in programs.prog_ids(build).values():
                    return build
    return None


@dataclass(frozen=True)
class Hook:
    """One place a program of vnetdp's is attached."""

    device: str
    ifindex: int
    hook: str
    pin: str
    program: str


def hooks(node: Node, ipr: IPRoute) -> list[Hook]:
    """Every hook the node's programs belong on: the NIC's, both of every pod's
    host veth, and the pods' XDP pass programs (pinned links)."""
    found = []
    nic = node.nic(ipr)
    for hook, program in node.nic_hooks().items():
        found.append(Hook(nic.name, nic.index, hook, node.bpffs.link_pin(nic.name, hook), program))
    for link in sorted(ipr.get_links(), key=lambda m: m.get_attr("IFLA_IFNAME")):
        name = link.get_attr("IFLA_IFNAME")
        if is_host_ifname(name):
            for hook, program in endpoint.POD_PROGRAMS.items():
                found.append(Hook(name, link["index"], hook, node.bpffs.link_pin(name, hook), program))
    if os.path.isdir(node.bpffs.links_dir):
        prefix = endpoint.POD_XDP_HOOK + "-"
        for pin in sorted(os.listdir(node.bpffs.links_dir)):
            if pin.startswith(prefix):
                link = attach.pinned_link(os.path.join(node.bpffs.links_dir, pin))
                if link is not None:  # the pod end's XDP link, in the pod's namespace
                    found.append(Hook(f"{pin[len(prefix):]} (pod end)", link.ifindex, "xdp",
                                      os.path.join(node.bpffs.links_dir, pin), "pod_xdp_pass"))
    return found


def swap_all(node: Node, build: str, targets: list[Hook], ipr: IPRoute, report: Report) -> None:
    """Replace the program on every hook of ``targets`` with ``build``'s, in place."""
    fds: dict[str, int] = {}
    try:
        for h in targets:
            try:
                if h.program not in fds:
                    fds[h.program] = node.programs.prog_fd(h.program, build)
                swapped = attach.replace(fds[h.program], h.ifindex, h.hook, h.pin, ipr)
            except Exception as e:  # one device must not stop the others
                report.errors.append(f"{h.device} {h.hook}: {e}")
                continue
            if swapped is None:
                report.missing.append(f"{h.device} {h.hook}")
                continue
            before, after = swapped
            swap = Swap(h.device, h.hook, after.mechanism, h.program, before.prog_id, after.prog_id)
            (report.unchanged if before.prog_id == after.prog_id else report.replaced).append(swap)
    finally:
        for fd in fds.values():
            os.close(fd)


@contextlib.contextmanager
def node_alone(state_dir: str) -> Iterator[None]:
    """No CNI call runs (GC lock, exclusive) and no NIC change (node lock)."""
    with flocked(os.path.join(state_dir, GC_LOCK), exclusive=True, timeout=LOCK_WAIT_S), \
            flocked(os.path.join(state_dir, NODE_LOCK)):
        yield


def upgrade(state_dir: str, bpffs_dir: str, cflags: tuple[str, ...] = (), rollback: bool = False) -> Report:
    """Move the node to the sources' build with ``cflags`` (or back to the
    previous build) without an empty hook; see the module's docstring."""
    start = time.perf_counter()
    node = node_for(state_dir, bpffs_dir, cflags)
    programs: Programs = node.programs
    if rollback:
        target = node.bpffs.marker(PREVIOUS)
        if not target or not programs.is_pinned(target):
            raise UpgradeError(f"no previous build pinned in {node.bpffs.progs_root} to roll back to "
                               "(a rollback needs an upgrade before it)")
        report = Report("rollback", None, target)
    else:
        if not os.path.isdir(node.bpffs.maps_dir):
            raise UpgradeError(f"no datapath pinned in {bpffs_dir}: run vnetdp install first")
        report = Report("upgrade", None, programs.source_build)
        report.layout = programs.check_layouts().as_dict()  # IncompatibleLayout: refused
        loaded = programs.compile()
        report.compiled = loaded.compiled
    with node_alone(state_dir), IPRoute() as ipr:
        old = running_build(node, ipr)
        report.from_build = old
        targets = hooks(node, ipr)  # before anything moves: no NIC, no upgrade
        if old != report.to_build:
            # The intent first: from here on ADDs (and a rerun after a crash) use the target.
            node.bpffs.set_marker(PREVIOUS, old)
            node.bpffs.set_marker(CURRENT, report.to_build)
        programs.build = report.to_build
        swap_all(node, report.to_build, targets, ipr, report)
        report.pruned = programs.prune()
    report.previous = node.bpffs.marker(PREVIOUS)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def render(report: Report) -> str:
    """The report as an operator reads it."""
    lines = []
    what = "rolled back" if report.action == "rollback" else "upgraded"
    how = " (compiled)" if report.compiled else ""
    lines.append(f"{what}: build {report.from_build or '?'} -> {report.to_build}{how} in {report.seconds:.1f} s")
    if report.layout:
        lay = report.layout
        note = f", new maps {', '.join(lay['added'])}" if lay["added"] else ""
        lines.append(f"map layout: build {lay['build']}, pinned {lay['pinned']}: compatible{note}")
    if report.replaced or report.unchanged:
        lines.append(f"{'device':<26} {'hook':<8} {'mechanism':<9} {'program':<14} old id -> new id")
        for s in report.replaced:
            lines.append(f"{s.device:<26} {s.hook:<8} {s.mechanism:<9} {s.program:<14} {s.old_id} -> {s.new_id}")
        for s in report.unchanged:
            lines.append(f"{s.device:<26} {s.hook:<8} {s.mechanism:<9} {s.program:<14} {s.old_id} (already)")
    for m in report.missing:
        lines.append(f"not attached: {m} (vnetdp reconcile --fix attaches it)")
    for e in report.errors:
        lines.append(f"FAILED: {e}")
    lines.append(f"{len(report.replaced)} replaced, {len(report.unchanged)} already current, "
                 f"{len(report.errors)} failed; previous build {report.previous or 'none'} kept for --rollback"
                 + (f"; unpinned {', '.join(report.pruned)}" if report.pruned else ""))
    return "\n".join(lines)
