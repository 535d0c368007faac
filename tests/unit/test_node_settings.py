"""The node's settings file: defaults, atomic changes refused whole when any
value is bad, and what a network configuration may ask of them."""
from __future__ import annotations

import json
import os

import pytest

from vnetdp.datapath import settings
from vnetdp.datapath.node import NodeSettings


@pytest.fixture
def node_file(tmp_path) -> settings.NodeSettingsFile:
    return settings.NodeSettingsFile(str(tmp_path))


def test_a_node_without_a_file_has_the_defaults_and_they_fit_node_settings(node_file):
    loaded = node_file.load()
    assert loaded == {f.attribute: f.default for f in settings.FIELDS.values()}
    NodeSettings("/b", "/s", **loaded)  # every attribute exists there


def test_update_writes_only_what_differs_and_resets_with_none(node_file):
    node_file.update({"enableSnat": False, "snatPorts": [50000, 50999], "nicAttach": "tc"})
    with open(node_file.path) as f:
        assert json.load(f) == {"enableSnat": False, "snatPorts": [50000, 50999]}
    assert node_file.load()["snat_ports"] == (50000, 50999)
    assert node_file.update({"enableSnat": None})["enable_snat"] is True


@pytest.mark.parametrize("changes", [
    {"enableSnat": "no"}, {"snatPorts": [True, 10]}, {"snatPorts": [9, 8]}, {"vnetCidrs": ["10.0.0.0/33"]},
    {"nicAttach": "ebpf"}, {"snatFlowsPerEndpoint": -1}, {"ipsToRouteViaHost": "1.2.3.4"}, {"bogus": 1},
    {"allowMetadata": True, "localSwitching": "yes"},
])
def test_a_bad_change_is_refused_whole_and_the_file_is_untouched(node_file, changes):
    node_file.update({"enableSnat": False})
    before = open(node_file.path).read()
    with pytest.raises(settings.SettingError) as e:
        node_file.update(changes)
    assert any(name in str(e.value) for name in changes)
    assert open(node_file.path).read() == before


@pytest.mark.parametrize("text", ["{not json", "[1]", '{"unknown": 1}', '{"enableSnat": 1}'])
def test_a_broken_file_is_reported_not_guessed(node_file, text):
    os.makedirs(os.path.dirname(node_file.path), exist_ok=True)
    with open(node_file.path, "w") as f:
        f.write(text)
    with pytest.raises(settings.SettingError):
        node_file.load()


def test_conflicts_name_each_field_with_both_values(node_file):
    node = node_file.update({"vnetCidrs": ["10.3.0.0/16"]})
    asked = settings.parse({"vnetCidrs": ["10.3.0.0/16"], "enableSnat": False, "snatPorts": [61000, 65535]})
    assert settings.conflicts(node, asked) == ["enableSnat is False in the config but True on this node"]
    assert settings.conflicts(node, settings.parse({"vnetCidrs": ["10.3.0.1/16"]})) == []  # same prefix
