"""The CNI protocol layer and config parsing: every error path gets the spec's
code and changes nothing, results look as each version wants."""
from __future__ import annotations

import json
import pathlib

import pytest

from vnetdp.cni import config, main
from vnetdp.cni.spec import SUPPORTED_VERSIONS, CniError, Code, Env, Result, parse_config

CNI_DIR = pathlib.Path(__file__).resolve().parents[2] / "cni"
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


@pytest.mark.parametrize("environ,missing", [
    ({}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND"),
    ({**ADD_ENV, "CNI_NETNS": ""}, "CNI_NETNS"),
    ({"CNI_COMMAND": "DEL", "CNI_IFNAME": "eth0"}, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;novalue"}, "CNI_ARGS"),
])
def test_bad_environment_is_code_4_naming_the_variable(environ, missing):
    with pytest.raises(CniError) as e:
        Env.parse(environ)
    assert e.value.code == Code.INVALID_ENV and missing in e.value.msg


def test_environment_parses_args_and_path():
    env = Env.parse({**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web", "CNI_PATH": "/a:/b"})
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web"} and env.path == ("/a", "/b")
    assert Env.parse({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "e"}).netns == ""


@pytest.mark.parametrize("stdin,code", [
    (b"{not json", Code.DECODING_FAILURE),
    (b"[1, 2]", Code.DECODING_FAILURE),
    (b"", Code.DECODING_FAILURE),
    (b'{"cniVersion": "0.2.0"}', Code.INCOMPATIBLE_VERSION),
    (b'{"name": "x"}', Code.INCOMPATIBLE_VERSION),
])
def test_bad_stdin_is_decoding_or_version_error(stdin, code):
    with pytest.raises(CniError) as e:
        parse_config(stdin)
    assert e.value.code == code


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_results_carry_ip_version_only_before_1_0(version):
    result = Result(interfaces=[{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/x"}],
                    ips=[{"address": "10.3.1.1/32", "gateway": "169.254.1.1", "interface": 0}],
                    routes=[{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]).to_json(version)
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == version.startswith("0.")
    assert Result.parse(result).ips == [{"address": "10.3.1.1/32", "gateway": "169.254.1.1", "interface": 0}]


def run_main(environ: dict, stdin: bytes, capsys) -> tuple[int, dict]:
    rc = main.run("vnetdp", lambda env, conf: {"ok": True}, environ=environ, stdin=stdin)
    return rc, json.loads(capsys.readouterr().out)


def test_version_command_lists_every_supported_version(capsys):
    rc, out = run_main({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', capsys)
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_errors_are_the_spec_error_object_with_exit_1(capsys):
    rc, out = run_main(ADD_ENV, b'{"cniVersion": "0.4.0", "name": "n"', capsys)
    assert rc == 1 and out["code"] == Code.DECODING_FAILURE and out["msg"]
    rc, out = run_main({}, b"{}", capsys)
    assert rc == 1 and out["code"] == Code.INVALID_ENV


def test_unexpected_exception_is_an_internal_error_not_a_traceback(capsys):
    def boom(env, conf):
        raise KeyError("bug")
    rc = main.run("vnetdp", boom, environ=ADD_ENV, stdin=b'{"cniVersion": "1.1.0"}')
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["code"] == Code.INTERNAL and "bug" in out["msg"]


def azure_entry(path: str) -> dict:
    conflist = json.loads((CNI_DIR / path).read_text())
    entry = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    return {**entry, "type": "vnetdp", "ipam": {**entry["ipam"], "type": "vnetdp-ipam"}}


@pytest.mark.parametrize("path", ["azure-linux.conflist", "azure-linux-transparent.conflist"])
def test_azure_conflists_parse_after_renaming_the_types(path):
    conf = config.parse(azure_entry(path))
    assert conf.host_destinations == ["169.254.20.10/32"]
    assert conf.enable_snat and conf.local_switching and conf.ipam["type"] == "vnetdp-ipam"
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
])
def test_invalid_values_are_code_7_naming_the_field(field, value):
    with pytest.raises(CniError) as e:
        config.parse({"cniVersion": "1.1.0", "type": "vnetdp", "ipam": {"type": "vnetdp-ipam"}, field: value})
    assert e.value.code == Code.INVALID_CONFIG and field.split("/")[0] in e.value.msg


def test_own_fields_map_onto_node_settings():
    conf = config.parse({"cniVersion": "1.1.0", "type": "vnetdp", "ipam": {"type": "host-local"},
                         "master": "eth1", "vnetCidrs": ["10.3.0.0/16"], "enableSnat": False,
                         "localSwitching": False, "nicAttach": "xdp", "snatPorts": [50000, 50999],
                         "stateDir": "/s", "bpffsDir": "/b", "someFutureField": 1})
    s = conf.node_settings()
    assert (s.master, s.vnet_cidrs, s.enable_snat, s.local_switching, s.nic_attach, s.snat_ports,
            s.state_dir, s.bpffs_dir) == ("eth1", ["10.3.0.0/16"], False, False, "xdp", (50000, 50999), "/s", "/b")
    assert "unknown field ignored: someFutureField" in conf.notes
