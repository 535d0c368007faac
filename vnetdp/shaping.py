"""A pod's rate limits as tbf qdiscs (token bucket filters): the root qdisc
of one interface, at a rate in bytes/s with a bucket of ``burst`` bytes and
a queue of QUEUE_NS at the rate behind it. A queue rather than a policer, so
that TCP senders slow down to the rate instead of losing whole windows: its
ingress on the pod's host veth (bpf/lib/bandwidth.h steers the datapath's
traffic through it), its egress on the pod's own end. Runs in whichever
namespace holds the interface.
"""
from __future__ import annotations

from pyroute2 import IPRoute

KIND = "tbf"
HANDLE = "1:"
ROOT = 0xFFFFFFFF  # TC_H_ROOT: the parent of an interface's root qdisc
QUEUE_NS = 25_000_000  # what may wait: the rate for 25 ms


def shape(ipr: IPRoute, index: int, bytes_per_s: int, burst: int) -> None:
    """Make interface ``index``'s root qdisc a tbf at ``bytes_per_s`` with a
    bucket of ``burst`` bytes (at least one 64 KiB packet: see
    maps.Bandwidth), replacing what was there."""
    queue = bytes_per_s * QUEUE_NS // 1_000_000_000
    ipr.tc("replace", KIND, index=index, handle=HANDLE, rate=bytes_per_s, burst=burst, limit=burst + queue)


def shaped_rate(ipr: IPRoute, index: int) -> int | None:
    """The rate in bytes/s of interface ``index``'s root tbf; None without one."""
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc.get_attr("TCA_KIND") == KIND and qdisc["parent"] == ROOT:
            return qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"]
    return None


def problems(ipr: IPRoute, index: int, name: str, want: int, direction: str) -> list[str]:
    """What differs between interface ``index`` (``name``) and a ``direction``
    rate of ``want`` bytes/s (0: none): empty when its root tbf keeps it."""
    have = shaped_rate(ipr, index)
    if have == (want or None):
        return []
    if have is None:
        return [f"{name} has no qdisc keeping the pod's {direction} rate of {want} bytes/s"]
    if not want:
        return [f"{name} has a tbf at {have} bytes/s that vnetdp did not install "
                "(a chained bandwidth plugin?): use capabilities.bandwidth instead"]
    return [f"{name}'s tbf keeps {have} bytes/s, the pod's {direction} rate is {want}"]
