"""The handler table (vnetdp.plugins): one CNI call of either plugin by its
executable name, end to end through skel, and vnetdp-ipam registered to run
in-process for the network plugin's delegation."""
from __future__ import annotations

import json

import pytest

from helpers import cni_env, environ, ipam_conf
from vnetdp import plugins
from vnetdp.cni import invoke
from vnetdp.cni.spec import SUPPORTED_VERSIONS
from vnetdp.ipam import plugin as ipam_plugin


def run(plugin: str, env: dict, stdin: bytes, capsys) -> tuple[int, dict]:
    rc = plugins.run(plugin, env, stdin)
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("plugin", [plugins.IPAM, plugins.NETWORK])
@pytest.mark.parametrize("stdin,version", [(b'{"cniVersion": "0.4.0"}', "0.4.0"), (b"", "1.1.0"),
                                           (b"not json", "1.1.0")])
def test_version_end_to_end(plugin, stdin, version, capsys):
    rc, out = run(plugin, {"CNI_COMMAND": "VERSION"}, stdin, capsys)
    assert rc == 0 and out == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_running_either_plugin_registers_the_ipam_plugin_in_process(in_process, capsys):
    run(plugins.NETWORK, {"CNI_COMMAND": "VERSION"}, b"", capsys)
    assert in_process == {plugins.IPAM: ipam_plugin.handle}


def test_ipam_add_and_del_end_to_end(tmp_path, capsys):
    stdin = json.dumps(ipam_conf(tmp_path, "1.0.0")).encode()
    rc, out = run(plugins.IPAM, environ("ADD"), stdin, capsys)
    assert rc == 0 and out["cniVersion"] == "1.0.0" and out["ips"] == [{"address": "10.9.0.2/29",
                                                                        "gateway": "10.9.0.1"}]
    assert plugins.run(plugins.IPAM, environ("DEL"), stdin) == 0 and capsys.readouterr().out == ""
    assert ipam_plugin.store_of(json.loads(stdin)).leases() == []


def test_ipam_errors_leave_as_the_spec_error_object(tmp_path, capsys):
    conf = ipam_conf(tmp_path, "0.4.0", environment="dhcp")
    rc, out = run(plugins.IPAM, environ("ADD"), json.dumps(conf).encode(), capsys)
    assert rc == 1 and out["cniVersion"] == "0.4.0" and out["code"] == 7 and "dhcp" in out["msg"]


def test_the_network_plugin_delegates_to_the_registered_ipam_plugin(tmp_path):
    """What the network plugin's ADD does for its address, after plugins.run."""
    plugins.preload()
    conf = ipam_conf(tmp_path)
    out = invoke.delegate(conf["ipam"]["type"], cni_env("ADD"), conf)
    assert out["ips"][0]["address"] == "10.9.0.2/29"
    assert invoke.delegate(plugins.IPAM, cni_env("ADD"), conf, command="DEL") is None
    assert ipam_plugin.store_of(conf).leases() == []
