"""The CNI protocol library (vnetdp.cni): spec (environment, stdin, results),
skel (one call: the result or the spec's error object, and the exit code) and
invoke (calling another plugin, in-process or through CNI_PATH)."""
from __future__ import annotations

import json
import os

import pytest

from helpers import ADD_ENV, cni_env
from vnetdp.cni import invoke, skel
from vnetdp.cni.spec import (SUPPORTED_VERSIONS, CniError, Code, Env, Result, parse_config,
                             valid_attachments, version_result)


# --- spec -------------------------------------------------------------------
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


def test_valid_attachments_are_gcs_pairs_to_keep():
    conf = {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"},
                                          {"containerID": "c2", "ifname": "eth1", "extra": 1}]}
    assert valid_attachments(conf) == {("c1", "eth0"), ("c2", "eth1")}


@pytest.mark.parametrize("conf", [{}, {"cni.dev/valid-attachments": "c1"},
                                  {"cni.dev/valid-attachments": [{"containerID": "c1"}]},
                                  {"cni.dev/valid-attachments": ["c1"]}])
def test_gc_without_a_valid_list_is_code_7(conf):
    with pytest.raises(CniError) as e:
        valid_attachments(conf)
    assert e.value.code == Code.INVALID_CONFIG and "valid-attachments" in e.value.msg


@pytest.mark.parametrize("asked,answered", [("0.3.1", "0.3.1"), ("9.9.9", "1.1.0"), (None, "1.1.0")])
def test_version_result_answers_in_the_asked_version_when_known(asked, answered):
    assert version_result({"cniVersion": asked}) == {"cniVersion": answered,
                                                     "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- skel -------------------------------------------------------------------
def run_skel(environ: dict, stdin: bytes, capsys, handler=lambda env, conf: {"ok": True}) -> tuple[int, dict]:
    rc = skel.run("vnetdp", handler, environ=environ, stdin=stdin)
    return rc, json.loads(capsys.readouterr().out)


def test_version_command_lists_every_supported_version(capsys):
    rc, out = run_skel({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', capsys)
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_errors_are_the_spec_error_object_with_exit_1(capsys):
    rc, out = run_skel(ADD_ENV, b'{"cniVersion": "0.4.0", "name": "n"', capsys)
    assert rc == 1 and out["code"] == Code.DECODING_FAILURE and out["msg"]
    rc, out = run_skel({}, b"{}", capsys)
    assert rc == 1 and out["code"] == Code.INVALID_ENV


def test_handler_errors_are_written_in_the_configs_version_with_details(capsys):
    def refuse(env, conf):
        raise CniError(Code.POOL_EXHAUSTED, "no address", "add some")
    rc, out = run_skel(ADD_ENV, b'{"cniVersion": "0.4.0"}', capsys, refuse)
    assert rc == 1 and out == {"cniVersion": "0.4.0", "code": 100, "msg": "no address", "details": "add some"}


def test_handler_gets_the_parsed_call_and_its_result_is_printed(capsys):
    seen = []
    rc, out = run_skel(ADD_ENV, b'{"cniVersion": "1.1.0", "name": "n"}', capsys,
                       lambda env, conf: seen.append((env, conf)) or {"done": env.command})
    assert rc == 0 and out == {"done": "ADD"}
    assert seen == [(Env.parse(ADD_ENV), {"cniVersion": "1.1.0", "name": "n"})]


def test_unexpected_exception_is_an_internal_error_not_a_traceback(capsys):
    def boom(env, conf):
        raise KeyError("bug")
    rc, out = run_skel(ADD_ENV, b'{"cniVersion": "1.1.0"}', capsys, boom)
    assert rc == 1 and out["code"] == Code.INTERNAL and "bug" in out["msg"]


# --- invoke -----------------------------------------------------------------
def test_registered_plugin_runs_in_process_with_the_command_override():
    calls = []
    invoke.register("fake-ipam", lambda env, conf: calls.append((env, conf)) or {"ips": []})
    call = Env.parse({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME=web", "CNI_PATH": "/nowhere"})
    assert invoke.delegate("fake-ipam", call, {"cniVersion": "1.1.0"}, command="DEL") == {"ips": []}
    [(seen, conf)] = calls
    assert seen == Env("DEL", "c1", "/run/netns/x", "eth0", {"K8S_POD_NAME": "web"}, ("/nowhere",))
    assert conf == {"cniVersion": "1.1.0"}
    invoke.delegate("fake-ipam", call, {})
    assert calls[-1][0].command == "ADD"  # no override: the call's own command


def test_registered_plugin_errors_pass_through_unchanged():
    def refuse(env, conf):
        raise CniError(Code.POOL_EXHAUSTED, "full")
    invoke.register("fake-ipam", refuse)
    with pytest.raises(CniError) as e:
        invoke.delegate("fake-ipam", cni_env("ADD"), {})
    assert (e.value.code, e.value.msg) == (Code.POOL_EXHAUSTED, "full")


@pytest.mark.parametrize("name,path", [("missing", ()), ("missing", ("/nonexistent",)), ("../sh", ("/bin",))])
def test_unregistered_plugin_not_in_cni_path_is_code_7(name, path):
    with pytest.raises(CniError) as e:
        invoke.find_plugin(name, path)
    assert e.value.code == Code.INVALID_CONFIG and repr(name) in e.value.msg


def plugin_script(directory, name: str, body: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def test_executable_plugin_gets_the_cni_environment_and_config(tmp_path):
    plugin_script(tmp_path, "echo-ipam",
                  'printf \'{"cmd": "%s", "cid": "%s", "args": "%s", "stdin": %s}\' '
                  '"$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_ARGS" "$(cat)"\n')
    call = Env("ADD", "c9", "/run/netns/x", "eth0", {"A": "1"}, ("/nonexistent", str(tmp_path)))
    out = invoke.delegate("echo-ipam", call, {"cniVersion": "1.1.0"}, command="CHECK")
    assert out == {"cmd": "CHECK", "cid": "c9", "args": "A=1", "stdin": {"cniVersion": "1.1.0"}}


def test_executable_plugin_failure_is_its_error_object_or_code_106(tmp_path):
    plugin_script(tmp_path, "busy", 'echo \'{"code": 11, "msg": "busy", "details": "later"}\'; exit 1\n')
    plugin_script(tmp_path, "crash", "echo oops >&2; exit 3\n")
    call = Env("ADD", "c1", "/x", "eth0", {}, (str(tmp_path),))
    with pytest.raises(CniError) as e:
        invoke.delegate("busy", call, {})
    assert (e.value.code, e.value.msg, e.value.details) == (11, "busy: busy", "later")
    with pytest.raises(CniError) as e:
        invoke.delegate("crash", call, {})
    assert e.value.code == Code.DELEGATE_FAILED and "exit 3" in e.value.msg and "oops" in e.value.details
