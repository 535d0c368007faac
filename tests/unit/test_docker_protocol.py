"""The Docker plugin's protocol over a real unix socket: every method answers
JSON with Docker's plugin content type, errors are ``{"Err": ...}`` with an
error status (never an HTML page, never a hang), unknown methods are 404s
(libnetwork's "not implemented"), malformed requests 400s."""
from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from docker_fakes import Client, FakePlumbing, Plugin, plugin_on
from vnetdp.docker import protocol


@pytest.fixture
def plugin(tmp_path):
    with plugin_on(tmp_path) as p:
        yield p


def served(p: Plugin) -> list[str]:
    return sorted(p.server.routes)


def test_activate_says_both_drivers_with_dockers_content_type(plugin):
    reply = plugin.call("Plugin.Activate")
    assert reply.status == 200 and reply.body == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert reply.content_type == protocol.CONTENT_TYPE


def test_the_plugin_serves_every_method_of_both_drivers(plugin):
    assert served(plugin) == sorted([
        "Plugin.Activate",
        *(f"NetworkDriver.{m}" for m in ("GetCapabilities", "CreateNetwork", "DeleteNetwork", "CreateEndpoint",
                                         "DeleteEndpoint", "Join", "Leave", "EndpointOperInfo",
                                         "ProgramExternalConnectivity", "RevokeExternalConnectivity",
                                         "DiscoverNew", "DiscoverDelete")),
        *(f"IpamDriver.{m}" for m in ("GetCapabilities", "GetDefaultAddressSpaces", "RequestPool", "ReleasePool",
                                      "RequestAddress", "ReleaseAddress"))])


@pytest.mark.parametrize("body", [None, {}])
def test_every_method_answers_json_to_an_empty_request(plugin, body):
    """Argument-less methods succeed; the others say what is missing."""
    for method in served(plugin):
        reply = plugin.call(method, body)
        assert reply.content_type == protocol.CONTENT_TYPE, method
        assert reply.ok or (reply.status == 400 and "missing" in reply.err), (method, reply)


def test_capabilities_and_address_spaces(plugin):
    assert plugin.ok("NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "local"}
    assert plugin.ok("IpamDriver.GetCapabilities") == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    assert plugin.ok("IpamDriver.GetDefaultAddressSpaces") == {"LocalDefaultAddressSpace": "vnetdp",
                                                               "GlobalDefaultAddressSpace": "vnetdp"}
    assert plugin.ok("NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1",
                                                                                          "self": True}}) == {}


@pytest.mark.parametrize("path", ["/NetworkDriver.AllocateNetwork", "/NetworkDriver.Nonsense", "/Nonsense", "/",
                                  "/VolumeDriver.Create"])
def test_unknown_methods_are_404_with_a_json_error(plugin, path):
    reply = plugin.raw(path, b'{"NetworkID": "x"}')
    assert reply.status == 404 and reply.content_type == protocol.CONTENT_TYPE
    assert "does not implement" in reply.err and path.strip("/") in reply.err


def test_other_http_verbs_are_refused_in_json(plugin):
    reply = plugin.raw("/Plugin.Activate", verb="GET")
    assert reply.status == 405 and "POST" in reply.err


@pytest.mark.parametrize("raw, why", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_bodies_are_400(plugin, raw, why):
    reply = plugin.raw("/NetworkDriver.CreateNetwork", raw)
    assert reply.status == 400 and why in reply.err


@pytest.mark.parametrize("method, body, field", [
    ("NetworkDriver.CreateNetwork", {"NetworkID": 5}, "NetworkID"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "Options": []}, "Options"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "IPv4Data": {"Pool": "x"}}, "IPv4Data"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "IPv4Data": ["x"]}, "IPv4Data"),
    ("NetworkDriver.Join", {"NetworkID": "n1", "EndpointID": True}, "EndpointID"),
    ("NetworkDriver.Join", {"NetworkID": "../../etc", "EndpointID": "e"}, "NetworkID"),
    ("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "V6": "no"}, "V6"),
    ("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "Options": {"a": 1}}, "Options.a"),
    ("IpamDriver.RequestAddress", {"PoolID": 7}, "PoolID"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "vnetdp:10.99.0.0/16", "Address": ["10.99.1.1"]}, "Address"),
])
def test_wrong_types_are_400_naming_the_field(plugin, method, body, field):
    reply = plugin.call(method, body)
    assert reply.status == 400 and field in reply.err, reply


def exchange(p: Plugin, data: bytes) -> tuple[str, str]:
    """Send raw bytes, read until the server closes or answers whole: (head, body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(p.socket)
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            head, sep, body = got.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(body) >= length:
                break
    text = got.decode()
    head, _, body = text.partition("\r\n\r\n")
    return (head, body) if body or text.startswith("HTTP/") else ("", text)


def test_requests_http_server_cannot_parse_still_get_json(plugin):
    head, body = exchange(plugin, b"GARBAGE\r\n\r\n")   # HTTP/0.9 style: a body and no head
    assert "Err" in json.loads(body) and "<" not in body
    head, body = exchange(plugin, b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: many\r\n\r\n")
    assert " 400 " in head.splitlines()[0] and protocol.CONTENT_TYPE in head
    assert "Content-Length" in json.loads(body)["Err"]
    head, body = exchange(plugin, b"POST /Plugin.Activate HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n")
    assert head.startswith("HTTP/1.") and "Err" in json.loads(body) and "<" not in body


def test_keep_alive_serves_several_calls_on_one_connection(plugin):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(plugin.socket)
        request = b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n"
        s.sendall(request + request)
        data = b""
        while data.count(b"Implements") < 2:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2


def test_a_chunked_body_is_read(plugin):
    body = b'{"NetworkID": "n1"}'
    reply = plugin.raw("/NetworkDriver.DeleteNetwork", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
                       headers={"Transfer-Encoding": "chunked"})
    assert reply.ok, reply


def test_an_oversized_body_is_refused_before_it_is_read(plugin):
    head, body = exchange(plugin, b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\n"
                                  b"Content-Length: %d\r\n\r\n{" % (protocol.MAX_BODY + 1))
    assert " 413 " in head.splitlines()[0] and "bytes" in json.loads(body)["Err"]


def test_a_bug_in_a_handler_is_a_json_500_not_a_hang(plugin):
    def broken(body):
        raise KeyError("oops")
    plugin.server.routes["NetworkDriver.GetCapabilities"] = broken
    reply = plugin.call("NetworkDriver.GetCapabilities")
    assert reply.status == 500 and "internal error" in reply.err and "oops" in reply.err


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not_taken(tmp_path):
    with plugin_on(tmp_path) as p:
        with pytest.raises(protocol.PluginError, match="another process serves"):
            protocol.Server(p.socket, {})
    stale = Plugin(str(tmp_path), FakePlumbing())
    path = stale.socket
    stale.server.shutdown()
    stale.server.socket.close()        # as after SIGKILL: the file stays, nobody listens
    try:
        assert os.path.exists(path)
        again = protocol.Server(path, {"Plugin.Activate": protocol.read_only({"Implements": []})})
        assert os.path.exists(path)
        again.server_close()
        assert not os.path.exists(path)   # a clean stop removes it
    finally:
        shutil.rmtree(stale.dir, ignore_errors=True)


def test_the_command_serves_until_sigterm_and_removes_its_socket(tmp_path):
    """``vnetdp docker-plugin`` as a service runs it, here with the interface
    document in a file; SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    doc = tmp_path / "interfaces.json"
    doc.write_text(json.dumps({"Interfaces": [{"MacAddress": "*", "IsPrimary": True, "IPSubnets": [
        {"Prefix": "10.99.0.0/16", "IPAddresses": [{"Address": "10.99.0.4", "IsPrimary": True},
                                                    {"Address": "10.99.1.1", "IsPrimary": False}]}]}]}))
    sock_dir = tempfile.mkdtemp(prefix="vnd-dk-")
    sock = f"{sock_dir}/vnetdp.sock"
    proc = subprocess.Popen([sys.executable, "-m", "vnetdp.cli", "docker-plugin", "--socket", sock,
                             "--state-dir", str(tmp_path / "state"), "--bpffs-dir", str(tmp_path / "bpffs"),
                             "--ipam-file", str(doc)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        client = Client(sock)
        assert client.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
        assert client.ok("IpamDriver.RequestPool", {"AddressSpace": "vnetdp", "Pool": "", "V6": False}) == \
            {"PoolID": "vnetdp:10.99.0.0/16", "Pool": "10.99.0.0/16", "Data": {}}
        assert client.ok("IpamDriver.RequestAddress", {"PoolID": "vnetdp:10.99.0.0/16"}) == \
            {"Address": "10.99.1.1/32", "Data": {}}   # the primary address is the host's
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert proc.returncode == 0, out
    assert not os.path.exists(sock) and "IpamDriver.RequestAddress: ok" in out
