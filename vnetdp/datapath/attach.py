"""Attaching pinned programs to devices, idempotently.

Hooks: ``ingress`` and ``egress`` (tc) and ``xdp``. tc hooks use tcx where the kernel has it
(a BPF link, pinned because the CNI process exits at once: SPEC §9) and else a
clsact qdisc with a direct-action filter, which outlives its creator by
itself. ``xdp`` is always a pinned BPF link. Everything works on the calling
thread's network namespace: enter the right one first (``vnetdp.netns``).

A program is replaced in place, never detached first: ``BPF_LINK_UPDATE`` for
links, a filter ``replace`` (same handle and prio) for clsact (``replace``;
``attach`` does it when another program of vnetdp's is there). A device just
created (a pod's veth, on every ADD) takes its programs from ``attach_new``:
nothing to look up or replace there, and clsact in one raw netlink round trip.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnetdp import rtnl
from vnetdp.datapath import syscall
from vnetdp.datapath.bpffs import remove_pin

CLSACT_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
TCX_ATTACH_TYPES = {"ingress": syscall.ATTACH_TCX_INGRESS, "egress": syscall.ATTACH_TCX_EGRESS}
FILTER_PRIO = 1
FILTER_HANDLE = 1
FILTER_NAME = "vnetdp"
MODES = ("auto", "tcx", "clsact")


@dataclass(frozen=True)
class Attachment:
    """What is attached at one hook of one device."""

    ifindex: int
    hook: str          # "ingress", "egress" or "xdp"
    mechanism: str     # "tcx", "clsact" or "xdp-link"
    prog_id: int


@contextlib.contextmanager
def socket_or_own(ipr: IPRoute | None) -> Iterator[IPRoute]:
    """The caller's netlink socket, or a new one for this call (opening one
    costs ~1.5 ms: callers that have one pass it)."""
    if ipr is not None:
        yield ipr
    else:
        with IPRoute() as own:
            yield own


def _link_attachment(pin: str) -> Attachment | None:
    try:
        fd = syscall.obj_get(pin)
    except syscall.BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        info = syscall.obj_info(fd, syscall.LinkInfo())
    finally:
        os.close(fd)
    if info.ifindex == 0:  # device gone: the link is defunct
        return None
    if info.type == syscall.LINK_TYPE_XDP:
        return Attachment(info.ifindex, "xdp", "xdp-link", info.prog_id)
    hook = "egress" if info.attach_type == syscall.ATTACH_TCX_EGRESS else "ingress"
    return Attachment(info.ifindex, hook, "tcx", info.prog_id)


def pinned_link(pin: str) -> Attachment | None:
    """What the link pinned at ``pin`` attaches (None: no pin, or a defunct link
    whose device is gone); the device may be in any namespace."""
    return _link_attachment(pin)


def _clsact_attachment(ifindex: int, hook: str, ipr: IPRoute | None) -> Attachment | None:
    with socket_or_own(ipr) as ipr:
        try:
            filters = ipr.get_filters(index=ifindex, parent=CLSACT_PARENTS[hook])
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENODEV, errno.ENOENT):
                return None
            raise
    for f in filters:
        opts = f.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME", "") if opts is not None else ""
        if name.startswith(FILTER_NAME + "-"):
            return Attachment(ifindex, hook, "clsact", int(name.rpartition("-")[2]))
    return None


def attached(ifindex: int, hook: str, pin: str, ipr: IPRoute | None = None) -> Attachment | None:
    """What vnetdp has attached at (ifindex, hook), whichever mechanism it used."""
    link = _link_attachment(pin)
    if link is not None and link.ifindex == ifindex:
        return link
    return _clsact_attachment(ifindex, hook, ipr) if hook in CLSACT_PARENTS else None


def _attach_link(prog_fd: int, ifindex: int, attach_type: int, pin: str) -> None:
    fd = syscall.link_create(prog_fd, ifindex, attach_type)
    try:
        tmp = pin + "~new"
        remove_pin(tmp)
        syscall.obj_pin(fd, tmp)
        os.rename(tmp, pin)
    finally:
        os.close(fd)


def _filter_name(prog_fd: int) -> str:
    """vnetdp's clsact filter's name: it carries the program id (pyroute2 does not decode TCA_BPF_ID)."""
    return f"{FILTER_NAME}-{syscall.prog_id(prog_fd)}"


def _clsact_filter(prog_fd: int, ifindex: int, hook: str, ipr: IPRoute) -> None:
    """Create or replace vnetdp's filter (handle 1, prio 1): a replace swaps the
    program in place (the kernel replaces the filter in its RCU list), so no
    packet meets an empty hook."""
    ipr.tc("replace-filter", "bpf", index=ifindex, handle=FILTER_HANDLE, prio=FILTER_PRIO,
           parent=CLSACT_PARENTS[hook], fd=prog_fd, name=_filter_name(prog_fd), direct_action=True)


def _attach_clsact(prog_fd: int, ifindex: int, hook: str, ipr: IPRoute | None) -> None:
    with socket_or_own(ipr) as ipr:
        try:
            ipr.tc("add", "clsact", index=ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        _clsact_filter(prog_fd, ifindex, hook, ipr)


def _fits(current: Attachment, hook: str, mode: str) -> bool:
    """Whether ``attach`` in ``mode`` may keep ``current``'s mechanism (and so
    swap the program in place rather than detach and attach anew)."""
    if hook == "xdp":
        return current.mechanism == "xdp-link"
    return mode == "auto" or mode == current.mechanism


def replace(prog_fd: int, ifindex: int, hook: str, pin: str,
            ipr: IPRoute | None = None) -> tuple[Attachment, Attachment] | None:
    """Swap the program at (ifindex, hook) for ``prog_fd`` in place, keeping
    the mechanism: ``BPF_LINK_UPDATE`` on a pinned tcx or XDP link, a filter
    ``replace`` (same handle and prio, new fd and name) on clsact. The hook is
    never empty, and what the maps hold (shared pins) is untouched.
    (before, after), or None when nothing of vnetdp's is attached there."""
    current = attached(ifindex, hook, pin, ipr)
    if current is None:
        return None
    if current.prog_id == syscall.prog_id(prog_fd):
        return current, current
    if current.mechanism in ("tcx", "xdp-link"):
        fd = syscall.obj_get(pin)
        try:
            syscall.link_update(fd, prog_fd)
        finally:
            os.close(fd)
    else:
        with socket_or_own(ipr) as own:
            _clsact_filter(prog_fd, ifindex, hook, own)
    after = attached(ifindex, hook, pin, ipr)
    if after is None or after.prog_id != syscall.prog_id(prog_fd):
        raise RuntimeError(f"replacing the program at ifindex {ifindex} ({hook}) did not take")
    return current, after


def _attach_tcx(prog_fd: int, ifindex: int, hook: str, pin: str, mode: str) -> bool:
    """Attach a tc hook's program as a pinned tcx link where ``mode`` asks for
    one (tcx, or auto on a kernel that has tcx); False when clsact must do."""
    if mode == "clsact":
        return False
    try:
        _attach_link(prog_fd, ifindex, TCX_ATTACH_TYPES[hook], pin)
    except syscall.BpfError as e:
        if mode == "tcx" or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return False
    return True


def attach(prog_fd: int, ifindex: int, hook: str, pin: str, mode: str = "auto",
           ipr: IPRoute | None = None) -> Attachment:
    """Attach ``prog_fd`` at (ifindex, hook) unless that very program is there
    already; another program of vnetdp's there is replaced in place (see
    ``replace``) when its mechanism suits ``mode``."""
    current = attached(ifindex, hook, pin, ipr)
    if current is not None and current.prog_id == syscall.prog_id(prog_fd):
        return current
    if current is not None and _fits(current, hook, mode):
        swapped = replace(prog_fd, ifindex, hook, pin, ipr)
        if swapped is not None:
            return swapped[1]
    detach(ifindex, hook, pin, ipr)
    if hook == "xdp":
        _attach_link(prog_fd, ifindex, syscall.ATTACH_XDP, pin)
    elif not _attach_tcx(prog_fd, ifindex, hook, pin, mode):
        _attach_clsact(prog_fd, ifindex, hook, ipr)
    result = attached(ifindex, hook, pin, ipr)
    if result is None:
        raise RuntimeError(f"attaching to ifindex {ifindex} ({hook}) did not take")
    return result


def attach_new(rt: rtnl.Rtnl, ifindex: int, progs: dict[str, int], pins: dict[str, str], mode: str = "auto") -> None:
    """Attach ``progs`` (tc hook -> program fd; ``pins``: hook -> link pin) to
    a device just created, where nothing can be attached yet: tcx links where
    ``mode`` and the kernel allow, else the clsact qdisc and a filter per hook
    in one batch through ``rt`` (a socket in the device's namespace). The
    kernel acknowledges each step: nothing is read back."""
    clsact = {hook: fd for hook, fd in progs.items() if not _attach_tcx(fd, ifindex, hook, pins[hook], mode)}
    if clsact:
        parent = {hook: int(CLSACT_PARENTS[hook].replace(":", ""), 16) for hook in clsact}
        rt.batch(rtnl.qdisc_add(ifindex, "clsact", rtnl.CLSACT_HANDLE, rtnl.TC_H_CLSACT),
                 *(rtnl.bpf_filter_replace(ifindex, parent[hook], FILTER_PRIO, FILTER_HANDLE, fd, _filter_name(fd))
                   for hook, fd in clsact.items()))


def detach(ifindex: int | None, hook: str, pin: str, ipr: IPRoute | None = None) -> None:
    """Remove vnetdp's program at (ifindex, hook); nothing there is fine."""
    try:
        fd = syscall.obj_get(pin)
    except syscall.BpfError as e:
        if e.errno != errno.ENOENT:
            raise
    else:
        try:
            syscall.link_detach(fd)
        except syscall.BpfError as e:
            if e.errno not in (errno.ENOLINK, errno.EINVAL):
                raise
        finally:
            os.close(fd)
        remove_pin(pin)
    if hook in CLSACT_PARENTS and ifindex is not None:
        with socket_or_own(ipr) as ipr:
            try:
                ipr.tc("del-filter", "bpf", index=ifindex, handle=FILTER_HANDLE, prio=FILTER_PRIO,
                       parent=CLSACT_PARENTS[hook])
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                    raise
