"""Node defaults (vnetdp.defaults): the configuration's value, else the node's
(baked into the installed entry points), else the built-in default."""
from __future__ import annotations

import pytest

from vnetdp import defaults

CASES = [  # (conf, environment value, expected; None: the built-in default)
    ({"DIR": "/conf"}, "/node", "/conf"),
    ({}, "/node", "/node"),
    ({"DIR": ""}, "/node", "/node"),
    (None, "/node", "/node"),
    ({}, None, None),
    (None, "", None),
]


@pytest.mark.parametrize("conf,node,expected", CASES)
@pytest.mark.parametrize("function,field,variable,default", [
    (defaults.state_dir, "stateDir", "VNETDP_STATE_DIR", defaults.DEFAULT_STATE_DIR),
    (defaults.bpffs_dir, "bpffsDir", "VNETDP_BPFFS_DIR", defaults.DEFAULT_BPFFS_DIR),
])
def test_config_then_node_then_default(monkeypatch, function, field, variable, default, conf, node, expected):
    if node is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, node)
    conf = None if conf is None else {field if k == "DIR" else k: v for k, v in conf.items()}
    assert function(conf) == (expected or default)


def test_agent_socket_is_in_the_state_directory(monkeypatch):
    monkeypatch.setenv("VNETDP_STATE_DIR", "/node")
    assert defaults.agent_socket("/s") == "/s/agent.sock"
    assert defaults.agent_socket() == "/node/agent.sock"
