"""Raw rtnetlink (vnetdp.rtnl): each request ADD sends is byte for byte what
pyroute2 sends for the same call (compiled, never sent, by pyroute2's
IPBatch), so the endpoint it builds is the one it built before; answers are
read as pyroute2 reads them (read-only requests on this namespace); errors
name the request and the kernel's reason."""
from __future__ import annotations

import errno
import ipaddress
import struct

import pytest
from pyroute2 import IPBatch, IPRoute

from vnetdp import links, rtnl

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")


@pytest.fixture(scope="module")
def pyroute2_sends():
    """What pyroute2's IPRoute would send for a call: (type, flags, body)."""
    batch = IPBatch()

    def sends(method: str, *args, **kwargs) -> tuple[int, int, bytes]:
        batch.reset()
        getattr(batch, method)(*args, **kwargs)
        data = bytes(batch.batch)
        length, kind, flags, _, _ = struct.unpack_from("=IHHII", data)
        return kind, flags, data[16:length]

    yield sends
    batch.close()


@pytest.fixture
def rt():
    with rtnl.Rtnl() as sock:
        yield sock


def ours(r: rtnl.Request) -> tuple[int, int, bytes]:
    return r.type, r.flags, r.body


@pytest.mark.parametrize("request_, call", [
    (rtnl.addr_add(3, IP("10.0.0.5"), 32), ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 32})),
    (rtnl.route_replace(NET("169.254.1.1/32"), 3, scope=rtnl.SCOPE_LINK),
     ("route", "replace", {"dst": "169.254.1.1/32", "oif": 3, "scope": 253})),
    (rtnl.route_replace(NET("0.0.0.0/0"), 3, gateway=IP("169.254.1.1")),
     ("route", "replace", {"dst": "0.0.0.0/0", "gateway": "169.254.1.1", "oif": 3})),
    (rtnl.neigh_replace(3, IP("169.254.1.1"), "aa:bb:cc:dd:ee:ff"),
     ("neigh", "replace", {"dst": "169.254.1.1", "lladdr": "aa:bb:cc:dd:ee:ff", "ifindex": 3, "state": 0x80})),
    (rtnl.link_del("vnd0123456789a"), ("link", "del", {"ifname": "vnd0123456789a"})),
    (rtnl.link_up("lo"), ("link", "set", {"ifname": "lo", "state": "up"})),
    (rtnl.qdisc_add(3, "clsact", rtnl.CLSACT_HANDLE, rtnl.TC_H_CLSACT), ("tc", "add", "clsact", {"index": 3})),
    (rtnl.bpf_filter_replace(3, 0xFFFFFFF2, 1, 1, 9, "vnetdp-12"),
     ("tc", "replace-filter", "bpf", {"index": 3, "handle": 1, "prio": 1, "parent": "ffff:fff2", "fd": 9,
                                      "name": "vnetdp-12", "direct_action": True})),
], ids=["addr", "route-link", "route-default", "neigh", "link-del", "link-up", "clsact", "bpf-filter"])
def test_requests_are_what_pyroute2_sends(pyroute2_sends, request_, call):
    *args, kwargs = call
    assert ours(request_) == pyroute2_sends(*args, **kwargs)


@pytest.mark.parametrize("macs", [MACS, None])
def test_a_veth_is_what_pyroute2_sends_both_ends_down(pyroute2_sends, macs):
    """Down: an end asked up in its creating request opens before it has
    its peer, and the kernel refuses with ENOTCONN; each end comes up after."""
    peer = {"ifname": "eth0", "net_ns_fd": 7, "mtu": 1500, **({"address": macs[1]} if macs else {})}
    sent = pyroute2_sends("link", "add", ifname="vnd0123456789a", kind="veth", mtu=1500,
                          **({"address": macs[0]} if macs else {}), peer=peer)
    assert ours(rtnl.veth_add("vnd0123456789a", "eth0", 7, 1500, macs)) == sent


def test_answers_read_as_pyroute2_reads_them(rt):
    with IPRoute() as ipr:
        assert rtnl.get_link(rt, "lo") == links.get_link(ipr, "lo")
        oif = rtnl.default_route_oif(rt)
        assert oif == links.default_route_oif(ipr)
        if oif is not None:
            assert rtnl.link_by_index(rt, oif) == links.link_by_index(ipr, oif)
            assert [a for _, a in rtnl.ipv4_interfaces(rt, oif)] == links.ipv4_interfaces(ipr, oif)
        every = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
        assert {str(a.ip) for _, a in rtnl.ipv4_interfaces(rt)} == every
    assert rtnl.link_exists(rt, 1) and not rtnl.link_exists(rt, 2**31 - 1)


def test_a_missing_link_is_link_not_found(rt):
    with pytest.raises(rtnl.LinkNotFound):
        rtnl.get_link(rt, "vnd-no-such0")


def test_a_batch_raises_its_first_error_not_allowed_and_answers_the_rest(rt):
    gone = rtnl.link_del("vnd-no-such0")  # gone already is done
    assert rt.batch(gone, rtnl.link_get("lo"))[1][0]
    with pytest.raises(rtnl.NetlinkError) as e:
        rt.batch(rtnl.link_get("lo"), rtnl.link_up("vnd-no-such0"), rtnl.link_up("vnd-no-such1"))
    assert e.value.errno == errno.ENODEV and str(e.value).startswith("[Errno 19] set link vnd-no-such0 up:")
    assert rtnl.get_link(rt, "lo").index == 1  # the socket goes on


def test_errors_carry_the_kernels_reason(rt):
    with pytest.raises(rtnl.NetlinkError) as e:  # refused before anything changes: no such prefix length
        rt.batch(rtnl.addr_add(1, IP("127.9.9.9"), 33))
    assert e.value.errno == errno.EINVAL and "add address 127.9.9.9/33 on link 1" in str(e.value)
