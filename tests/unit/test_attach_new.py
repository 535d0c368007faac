"""Programs on a device just created (vnetdp.datapath.attach.attach_new): a
pinned tcx link per hook where the mode and the kernel allow, else clsact, its
qdisc and both filters in one netlink batch, each filter as ``attach`` names
and places it. No device: the batch is recorded, the links stand in."""
from __future__ import annotations

import errno

import pytest

from vnetdp import rtnl
from vnetdp.datapath import attach, syscall

PINS = {"ingress": "/pins/ingress-vnd0", "egress": "/pins/egress-vnd0"}
PROGS = {"ingress": 11, "egress": 12}  # fds; program id = fd + 100


class Batches:
    def __init__(self) -> None:
        self.sent: list[tuple[rtnl.Request, ...]] = []

    def batch(self, *requests: rtnl.Request) -> list[list[bytes]]:
        self.sent.append(requests)
        return [[] for _ in requests]


@pytest.fixture
def links(monkeypatch) -> dict:
    """The tcx links made, by pin; ``links["refuse"]``: the errno tcx fails with."""
    made: dict = {}

    def attach_link(prog_fd: int, ifindex: int, attach_type: int, pin: str) -> None:
        if "refuse" in made:
            raise syscall.BpfError(made["refuse"], "no tcx")
        made[pin] = (prog_fd, ifindex, attach_type)

    monkeypatch.setattr(attach, "_attach_link", attach_link)
    monkeypatch.setattr(syscall, "prog_id", lambda fd: fd + 100)
    return made


def clsact_batch() -> tuple[rtnl.Request, ...]:
    return (rtnl.qdisc_add(7, "clsact", rtnl.CLSACT_HANDLE, rtnl.TC_H_CLSACT),
            rtnl.bpf_filter_replace(7, 0xFFFFFFF2, attach.FILTER_PRIO, attach.FILTER_HANDLE, 11, "vnetdp-111"),
            rtnl.bpf_filter_replace(7, 0xFFFFFFF3, attach.FILTER_PRIO, attach.FILTER_HANDLE, 12, "vnetdp-112"))


def test_clsact_is_one_batch(links):
    rt = Batches()
    attach.attach_new(rt, 7, PROGS, PINS, "clsact")
    assert rt.sent == [clsact_batch()] and links == {}


def test_tcx_where_the_kernel_has_it(links):
    rt = Batches()
    attach.attach_new(rt, 7, PROGS, PINS, "auto")
    assert rt.sent == [] and links == {PINS["ingress"]: (11, 7, syscall.ATTACH_TCX_INGRESS),
                                       PINS["egress"]: (12, 7, syscall.ATTACH_TCX_EGRESS)}


@pytest.mark.parametrize("mode,errno_,falls_back", [("auto", errno.EINVAL, True), ("auto", errno.EPERM, False),
                                                    ("tcx", errno.EINVAL, False)])
def test_auto_falls_back_to_clsact_only_where_tcx_is_missing(links, mode, errno_, falls_back):
    links["refuse"] = errno_
    rt = Batches()
    if falls_back:
        attach.attach_new(rt, 7, PROGS, PINS, mode)
        assert rt.sent == [clsact_batch()]
    else:
        with pytest.raises(syscall.BpfError):
            attach.attach_new(rt, 7, PROGS, PINS, mode)
        assert rt.sent == []
