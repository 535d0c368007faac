"""ADD's cheap check of the node (vnetdp.datapath.configured, Node.ensure):
the node is configured again exactly when anything configure is made from
changed since the last one (settings, build, pins, the NIC and its addresses)
or what it attached to the NIC is gone; otherwise nothing is written.

The NIC is this namespace's ``lo`` (read only); pins are plain files in a
temporary directory, the NIC's attachment a stand-in."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os

import pytest

from vnetdp import rtnl
from vnetdp.datapath import attach, configured
from vnetdp.datapath.loader import LoadResult
from vnetdp.datapath.node import Node, NodeSettings, NodeState


@pytest.fixture
def attached(monkeypatch) -> dict[tuple[int, str], int]:
    """(ifindex, hook) -> the program id attached there (none: nothing)."""
    found: dict[tuple[int, str], int] = {}
    monkeypatch.setattr(attach, "attached", lambda ifindex, hook, pin, ipr=None: attach.Attachment(
        ifindex, hook, "tcx", found[ifindex, hook]) if (ifindex, hook) in found else None)
    return found


def make_node(tmp_path, build: str = "b1", **settings) -> Node:
    root = tmp_path / "bpffs"
    for d in ("maps", f"progs/{build}"):
        os.makedirs(root / d, exist_ok=True)
    for name in ("endpoints", "node", "vnet_cidrs"):
        (root / "maps" / name).touch()
    (root / "progs" / build / "from_nic").touch()
    current = root / "progs" / "current"
    if current.is_symlink():
        current.unlink()
    current.symlink_to(build)
    return Node(NodeSettings(str(root), str(tmp_path / "state"), **{"master": "lo", **settings}))


@pytest.fixture
def configures(monkeypatch) -> list[Node]:
    """Node.configure as it records itself, without loading or attaching anything."""
    done: list[Node] = []

    def _configure(node: Node, load: LoadResult, ipr) -> NodeState:
        done.append(node)
        return NodeState(rtnl.Link("lo", 1, "", 0), ipaddress.IPv4Address("127.0.0.1"), [], load)

    monkeypatch.setattr(Node, "_configure", _configure)
    return done


def loaded(node: Node) -> Node:
    """``node`` with its programs pinned already (no bcc)."""
    node.programs.load = lambda: LoadResult(node.programs.build, False, 0.0)
    return node


@pytest.fixture
def rt():
    with rtnl.Rtnl() as sock:
        yield sock


def test_a_configured_node_holds_until_its_settings_change(tmp_path, attached, rt):
    node = make_node(tmp_path)
    os.makedirs(node.settings.state_dir)
    attached[1, "ingress"] = 7
    inputs = configured.observe(node, rt)
    assert inputs.nic.name == "lo" and ipaddress.IPv4Interface("127.0.0.1/8") in inputs.addresses
    assert not configured.holds(node, inputs)   # never configured
    configured.record(node, inputs)
    assert configured.holds(node, configured.observe(node, rt))
    other = make_node(tmp_path, enable_snat=False)
    assert not configured.holds(other, configured.observe(other, rt))
    configured.forget(node)
    assert not configured.holds(node, configured.observe(node, rt))


@pytest.mark.parametrize("change", ["build", "map-pinned-again", "map-gone", "nic-address", "nic-program"])
def test_what_a_configure_is_made_from_changing_makes_it_not_hold(tmp_path, attached, rt, monkeypatch, change):
    node = make_node(tmp_path)
    os.makedirs(node.settings.state_dir)
    attached[1, "ingress"] = 7
    configured.record(node, configured.observe(node, rt))
    maps = tmp_path / "bpffs" / "maps"
    if change == "build":
        node = make_node(tmp_path, build="b2")
    elif change == "map-pinned-again":
        os.rename(maps / "node", maps / "old")
        (maps / "node").touch()
    elif change == "map-gone":
        (maps / "vnet_cidrs").unlink()
    elif change == "nic-address":
        real = rtnl.ipv4_interfaces
        monkeypatch.setattr(rtnl, "ipv4_interfaces", lambda sock, index=0: [
            *real(sock, index), (index, ipaddress.IPv4Interface("10.3.0.9/16"))])
    else:
        attached[1, "ingress"] = 8
    assert not configured.holds(node, configured.observe(node, rt))


def test_no_nic_to_configure_is_nothing_observed(tmp_path, rt):
    assert configured.observe(make_node(tmp_path, master="vnd-no-such0"), rt) is None


def test_ensure_configures_only_when_the_last_configure_no_longer_holds(tmp_path, attached, configures, rt):
    attached[1, "ingress"] = 7
    node = loaded(make_node(tmp_path))
    first = node.ensure(rt)                          # nothing recorded: a full configure
    assert configures == [node] and first.nic.name == "lo"
    again = node.ensure(rt)                          # unchanged: the record holds
    assert configures == [node]
    assert (again.nic.name, again.primary_ip, again.load.compiled) == ("lo", ipaddress.IPv4Address("127.0.0.1"),
                                                                        False)
    assert again.vnet_cidrs == [ipaddress.IPv4Network("127.0.0.0/8")]
    del attached[1, "ingress"]                       # the NIC lost its program
    node.ensure(rt)
    assert configures == [node, node]
    changed = loaded(make_node(tmp_path, vnet_cidrs=["10.3.0.0/16"]))
    assert changed.ensure(rt).vnet_cidrs == []       # (the stand-in configure's answer)
    assert configures[-1] is changed
    assert changed.ensure(rt).vnet_cidrs == [ipaddress.IPv4Network("10.3.0.0/16")]


def test_a_configure_that_fails_leaves_nothing_that_holds(tmp_path, attached, configures, rt, monkeypatch):
    attached[1, "ingress"] = 7
    node = loaded(make_node(tmp_path))
    node.ensure(rt)

    def broken(*_):
        raise RuntimeError("cut short")

    monkeypatch.setattr(Node, "_configure", broken)
    with pytest.raises(RuntimeError):
        node.configure()
    assert not configured.holds(node, configured.observe(node, rt))


def test_the_record_names_what_it_was_made_from(tmp_path, attached, rt):
    node = make_node(tmp_path)
    os.makedirs(node.settings.state_dir)
    attached[1, "ingress"] = 7
    inputs = configured.observe(node, rt)
    configured.record(node, inputs)
    with open(os.path.join(node.settings.state_dir, configured.RECORD_FILE)) as f:
        saved = json.load(f)
    assert saved["settings"] == json.loads(json.dumps(dataclasses.asdict(node.settings)))
    assert saved["build"] == "b1" and saved["attached"] == {"ingress": 7} and saved["nic"]["name"] == "lo"
    assert sorted(os.path.basename(p) for p in saved["pins"]) == ["endpoints", "from_nic", "node", "vnet_cidrs"]


def test_calls_that_found_it_changed_together_configure_it_once(tmp_path, attached, configures, rt, monkeypatch):
    attached[1, "ingress"] = 7
    node = loaded(make_node(tmp_path))
    looks: list[bool] = []
    real = Node._as_recorded

    def as_recorded(self: Node, sock: rtnl.Rtnl) -> NodeState | None:
        looks.append(True)
        if len(looks) == 1:     # this call finds the node changed...
            node.configure()    # ...and another one configures it before this one takes the lock
            return None
        return real(self, sock)

    monkeypatch.setattr(Node, "_as_recorded", as_recorded)
    assert node.ensure(rt).nic.name == "lo"
    assert len(looks) == 2 and configures == [node]
