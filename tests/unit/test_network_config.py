"""The network plugin's configuration (vnetdp.network.config): Azure's conflists
parse after renaming the types, what vnetdp lacks is refused with code 2,
invalid values are code 7, vnetdp's own fields become node settings."""
from __future__ import annotations

import json

import pytest

from helpers import CNI_DIR
from vnetdp import defaults
from vnetdp.cni.spec import CniError, Code
from vnetdp.network import config

BASE = {"cniVersion": "1.1.0", "name": "net1", "type": "vnetdp", "ipam": {"type": "vnetdp-ipam"}}


def azure_entry(path: str) -> dict:
    conflist = json.loads((CNI_DIR / path).read_text())
    entry = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    return {**entry, "type": "vnetdp", "ipam": {**entry["ipam"], "type": "vnetdp-ipam"}}


@pytest.mark.parametrize("path", ["azure-linux.conflist", "azure-linux-transparent.conflist"])
def test_azure_conflists_parse_after_renaming_the_types(path):
    conf = config.parse(azure_entry(path))
    assert conf.node_asks == {"host_destinations": ["169.254.20.10/32"]}  # asked of the node, no more
    assert conf.ipam["type"] == "vnetdp-ipam"
    assert "accepted and ignored: networkMonitor" in conf.notes
    assert ("accepted and ignored: bridge" in conf.notes) == (path == "azure-linux.conflist")


@pytest.mark.parametrize("field,value,named", [
    ("multiTenancy", True, "multiTenancy"),
    ("mode", "transparent-vlan", "mode=transparent-vlan"),
    ("ipv6Mode", "ipv6nat", "ipv6Mode"),
])
def test_fields_asking_for_what_vnetdp_lacks_are_code_2_naming_them(field, value, named):
    with pytest.raises(CniError) as e:
        config.parse({**azure_entry("azure-linux.conflist"), field: value})
    assert e.value.code == Code.UNSUPPORTED_FIELD and named in e.value.msg


@pytest.mark.parametrize("field,value", [
    ("enableSnat", "yes"), ("mtu", 10), ("mtu", True), ("nicAttach", "ebpf"), ("vnetCidrs", ["10.0.0.0/33"]),
    ("snatPorts", [2000, 1000]), ("ipam", {}), ("ipsToRouteViaHost", "169.254.20.10"),
    ("name", ""), ("name", 5), ("type", None), ("ipam", {"type": "vnetdp"}), ("ipam", {"type": 1}), ("dns", []),
])
def test_invalid_values_are_code_7_naming_the_field(field, value):
    with pytest.raises(CniError) as e:
        config.parse({**BASE, field: value})
    assert e.value.code == Code.INVALID_CONFIG and field.split("/")[0] in e.value.msg


def test_node_fields_in_a_config_are_only_asked_of_the_node():
    conf = config.parse({**BASE, "ipam": {"type": "host-local"}, "master": "eth1", "vnetCidrs": ["10.3.0.0/16"],
                         "enableSnat": False, "localSwitching": False, "nicAttach": "xdp",
                         "snatPorts": [50000, 50999], "allowMetadata": True, "snatFlowsPerEndpoint": 9,
                         "stateDir": "/s", "bpffsDir": "/b", "someFutureField": 1})
    assert conf.node_asks == {"master": "eth1", "vnet_cidrs": ["10.3.0.0/16"], "enable_snat": False,
                              "local_switching": False, "nic_attach": "xdp", "snat_ports": (50000, 50999),
                              "allow_metadata": True, "snat_flows_per_endpoint": 9}
    assert (conf.state_dir, conf.bpffs_dir) == ("/s", "/b")
    assert "unknown field ignored: someFutureField" in conf.notes
    assert (conf.name, conf.type, conf.version) == ("net1", "vnetdp", "1.1.0")


def test_directories_default_to_the_nodes(monkeypatch):
    monkeypatch.setenv("VNETDP_STATE_DIR", "/node/state")
    monkeypatch.delenv("VNETDP_BPFFS_DIR", raising=False)
    conf = config.parse(BASE)
    assert (conf.state_dir, conf.bpffs_dir) == ("/node/state", defaults.DEFAULT_BPFFS_DIR)
