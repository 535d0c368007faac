"""The vnetdp-ipam plugin's commands (vnetdp.ipam.plugin.handle) on a static
range: results, lease files on ADD/DEL/GC, GC rebuilding a corrupt state from
the leases, and every IpamError becoming its CNI code at the plugin's edge."""
from __future__ import annotations

import os

import pytest

from helpers import cni_env, ipam_conf
from vnetdp.cni.spec import CniError, Code
from vnetdp.ipam import errors, plugin


@pytest.fixture
def conf(tmp_path) -> dict:
    return ipam_conf(tmp_path)


def call(conf: dict, command: str, container_id: str = "c1", ifname: str = "eth0", **extra):
    return plugin.handle(cni_env(command, container_id, ifname), {**conf, **extra})


def add(conf: dict, container_id: str, ifname: str = "eth0") -> str:
    """ADD's address, without the prefix length."""
    return call(conf, "ADD", container_id, ifname)["ips"][0]["address"].split("/")[0]


def gc(conf: dict, *keep: str) -> None:
    call(conf, "GC", **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in keep]})


def leases(conf: dict) -> dict[str, str]:
    """Address -> container ID, as the lease files say."""
    return {a.address: a.container_id for a in plugin.store_of(conf).leases()}


def exhaust(conf: dict) -> dict:
    for cid in ("c1", "c2", "c3"):
        add(conf, cid)
    return conf


def corrupt(conf: dict, content: str = "") -> dict:
    """``conf``, its state file made unreadable as a state."""
    with open(plugin.store_of(conf).path, "w") as f:
        f.write(content)
    return conf


def cni_error(conf: dict, command: str, container_id: str = "c1") -> CniError:
    with pytest.raises(CniError) as e:
        call(conf, command, container_id)
    return e.value


@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_add_returns_the_address_in_its_subnet_with_the_gateway_route(tmp_path, version):
    out = plugin.handle(cni_env("ADD"), ipam_conf(tmp_path, version))
    ip = {"address": "10.9.0.2/29", "gateway": "10.9.0.1", **({"version": "4"} if version == "0.4.0" else {})}
    assert out["cniVersion"] == version and out["ips"] == [ip]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]


def test_add_check_del_and_their_leases(conf):
    a = add(conf, "c1")
    assert add(conf, "c1") == a and leases(conf) == {a: "c1"}
    assert call(conf, "CHECK") is None
    b = add(conf, "c2")
    assert leases(conf) == {a: "c1", b: "c2"}
    assert call(conf, "DEL") is None
    assert leases(conf) == {b: "c2"}
    assert call(conf, "DEL") is None               # DEL of what is gone succeeds
    assert cni_error(conf, "CHECK").code == Code.UNKNOWN_CONTAINER


def test_gc_releases_the_unlisted_and_their_leases(conf):
    kept = add(conf, "c2")
    for cid in ("c1", "c3"):
        add(conf, cid)
    gc(conf, "c2")
    assert leases(conf) == {kept: "c2"}
    with plugin.store_of(conf).transaction() as state:
        assert [a.container_id for a in state.allocations] == ["c2"]


def test_gc_rebuilds_a_corrupt_state_from_the_leases_of_the_valid_attachments(conf):
    addresses = {cid: add(conf, cid) for cid in ("c1", "c2")}
    corrupt(conf, '{"pools": [')
    assert cni_error(conf, "ADD", "c3").code == Code.STATE_CORRUPT   # until rebuilt
    gc(conf, "c2")
    assert leases(conf) == {addresses["c2"]: "c2"}
    assert add(conf, "c2") == addresses["c2"]                         # the same address again
    assert sorted({addresses["c2"], add(conf, "c3"), add(conf, "c4")}) == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]


@pytest.mark.parametrize("corrupted", [False, True])
def test_gc_of_one_network_leaves_another_networks_addresses(conf, corrupted):
    other = {**conf, "name": "net2"}
    theirs = add(other, "c2")
    add(conf, "c1")
    if corrupted:
        corrupt(conf, "garbage")
    gc(conf)
    assert leases(conf) == {theirs: "c2"}
    gc(other, "c2")
    assert add(other, "c2") == theirs


def test_status_says_whether_an_add_can_get_an_address(conf):
    assert call(conf, "STATUS") is None
    e = cni_error(exhaust(conf), "STATUS")
    assert e.code == Code.NOT_AVAILABLE and "add secondary IP addresses" in e.details


def test_version_needs_no_state(tmp_path):
    conf = ipam_conf(tmp_path / "never-made", "0.3.1")
    assert plugin.handle(cni_env("VERSION"), conf)["cniVersion"] == "0.3.1"
    assert not os.path.exists(tmp_path / "never-made")


@pytest.mark.parametrize("error,code", [
    (errors.PoolExhausted, 100), (errors.StateCorrupt, 101), (errors.StateIoError, 5),
    (errors.SourceUnavailable, 102), (errors.BadIpamConfig, 7),
])
def test_each_ipam_error_has_its_cni_code_and_keeps_msg_and_hint(error, code):
    e = plugin.as_cni_error(error("what happened", "what to do"))
    assert (e.code, e.msg, e.details) == (code, "what happened", "what to do")


def test_an_ipam_error_without_a_code_of_its_own_is_internal():
    assert plugin.as_cni_error(errors.IpamError("?")).code == Code.INTERNAL


def with_ipam(conf: dict, **ipam) -> dict:
    return {**conf, "ipam": {**conf["ipam"], **ipam}}


def bad_document(conf: dict) -> dict:
    path = os.path.join(conf["ipam"]["stateDir"], "interfaces.xml")
    with open(path, "w") as f:
        f.write("<Interfaces><Interface")
    return with_ipam(conf, environment="file", file=path)


@pytest.mark.parametrize("make,code,said", [
    (exhaust, 100, "no free address"),
    (corrupt, 101, "is empty"),
    (lambda conf: with_ipam(conf, environment="file", file="/nonexistent/vnd.xml"), 5, "cannot read ipam.file"),
    (bad_document, 102, "interface document is not valid"),
    (lambda conf: with_ipam(conf, environment="dhcp"), 7, "dhcp"),
    (lambda conf: with_ipam(conf, ranges=[[{"subnet": "nonsense"}]]), 7, "ipam.ranges"),
])
def test_handle_reports_each_ipam_failure_with_its_code(conf, make, code, said):
    e = cni_error(make(conf), "ADD", "c9")
    assert e.code == code and said in e.msg
    assert isinstance(e.__cause__, errors.IpamError)
