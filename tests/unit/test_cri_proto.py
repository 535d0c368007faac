"""The containerd CRI test's own pieces (tests/e2e/cri), without a runtime:
the protobuf codec of the CRI messages against bytes computed by hand from
the wire format, the pause image archive, pause.c's behaviour, and the
cgroup mount lines of the containerd wrapper."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from helpers import REPO

CRI_DIR = REPO / "tests/e2e/cri"


def _load(name: str):
    """A module of tests/e2e/cri by path (registered before it runs: its
    dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"vnd_cri_{name}", CRI_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


proto = _load("cri_proto")
pause_image = _load("pause_image")
containerd_run = _load("containerd_run")


def s(text: str) -> bytes:
    return text.encode()


# --- varints --------------------------------------------------------------------
@pytest.mark.parametrize("value,wire", [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001"),
    (2**64 - 1, "ffffffffffffffffff01"),
    (-1, "ffffffffffffffffff01"),          # int32/int64 -1: 64-bit two's complement, ten bytes
    (-2, "feffffffffffffffff01"),
])
def test_varints(value, wire):
    assert proto.encode_varint(value).hex() == wire
    decoded, end = proto.decode_varint(bytes.fromhex(wire), 0)
    assert end == len(wire) // 2 and decoded == value % 2**64


def test_a_varint_past_ten_bytes_or_cut_short_is_an_error():
    with pytest.raises(proto.DecodeError):
        proto.decode_varint(b"\x80" * 11, 0)
    with pytest.raises(proto.DecodeError):
        proto.decode_varint(b"\x80\x80", 0)


# --- encoding, checked against hand-computed bytes ------------------------------
def test_version_request():
    # field 1, wire type 2 -> key 0x0a; length 2; "v1"
    assert proto.encode("VersionRequest", {"version": "v1"}) == bytes.fromhex("0a02") + s("v1")
    assert proto.encode("VersionRequest", {"version": ""}) == b""  # proto3: defaults are not written


def test_run_pod_sandbox_request():
    metadata = (b"\x0a\x03" + s("web")            # name = 1
                + b"\x12\x02" + s("u1")           # uid = 2
                + b"\x1a\x07" + s("default")      # namespace = 3
                + b"\x20\x01")                    # attempt = 4 (varint)
    assert len(metadata) == 0x14
    label = b"\x0a\x03" + s("app") + b"\x12\x03" + s("web")      # map entry: key = 1, value = 2
    linux = b"\x12\x04" + b"\x0a\x02" + b"\x10\x01"              # security_context = 2 { namespace_options = 1 { pid = 2: 1 } }
    config = (b"\x0a\x14" + metadata                             # metadata = 1
              + b"\x12\x03" + s("web")                           # hostname = 2
              + b"\x32\x0a" + label                              # labels = 6
              + b"\x42\x06" + linux)                             # linux = 8
    assert len(config) == 0x2f
    expected = b"\x0a\x2f" + config + b"\x12\x06" + s("bridge")  # config = 1, runtime_handler = 2
    request = {"config": {"metadata": {"name": "web", "uid": "u1", "namespace": "default", "attempt": 1},
                          "hostname": "web", "labels": {"app": "web"},
                          "linux": {"security_context": {"namespace_options": {"pid": proto.CONTAINER}}}},
               "runtime_handler": "bridge"}
    assert proto.encode("RunPodSandboxRequest", request) == expected
    back = proto.decode("RunPodSandboxRequest", expected)
    assert back["config"]["metadata"] == request["config"]["metadata"]
    assert back["config"]["labels"] == {"app": "web"} and back["config"]["port_mappings"] == []
    assert back["config"]["linux"]["security_context"]["namespace_options"]["pid"] == proto.CONTAINER
    assert back["config"]["dns_config"] is None and back["runtime_handler"] == "bridge"


def test_status_and_stop_requests():
    assert proto.encode("PodSandboxStatusRequest", {"pod_sandbox_id": "ab", "verbose": True}) == \
        b"\x0a\x02" + s("ab") + b"\x10\x01"
    assert proto.encode("StopPodSandboxRequest", {"pod_sandbox_id": "ab"}) == b"\x0a\x02" + s("ab")
    assert proto.encode("RemovePodSandboxRequest", {"pod_sandbox_id": "ab"}) == b"\x0a\x02" + s("ab")
    assert proto.decode("StopPodSandboxResponse", b"") == {}


def test_negative_numbers_take_ten_bytes():
    # host_port = 3, int32 -1
    assert proto.encode("PortMapping", {"host_port": -1}) == b"\x18" + bytes.fromhex("ffffffffffffffffff01")
    assert proto.decode("PortMapping", b"\x18" + bytes.fromhex("ffffffffffffffffff01"))["host_port"] == -1
    # created_at = 4, int64 -2
    wire = b"\x20" + bytes.fromhex("feffffffffffffffff01")
    assert proto.encode("PodSandboxStatus", {"created_at": -2}) == wire
    assert proto.decode("PodSandboxStatus", wire)["created_at"] == -2


def test_repeated_numbers_are_written_packed_and_read_either_way():
    packed = b"\x2a\x03\x01\xac\x02"            # supplemental_groups = 5, LEN, [1, 300]
    unpacked = b"\x28\x01\x28\xac\x02"          # the same, one varint each
    assert proto.encode("LinuxSandboxSecurityContext", {"supplemental_groups": [1, 300]}) == packed
    for wire in (packed, unpacked):
        assert proto.decode("LinuxSandboxSecurityContext", wire)["supplemental_groups"] == [1, 300]
    # both forms in one message: the values add up, in order
    assert proto.decode("LinuxSandboxSecurityContext", unpacked[:2] + packed)["supplemental_groups"] == [1, 1, 300]


def test_maps_are_entries_in_key_order_with_both_fields():
    wire = proto.encode("PodSandboxConfig", {"annotations": {"b": "", "a": "x"}})
    assert wire == (b"\x3a\x06" + b"\x0a\x01" + s("a") + b"\x12\x01" + s("x")
                    + b"\x3a\x05" + b"\x0a\x01" + s("b") + b"\x12\x00")
    assert proto.decode("PodSandboxConfig", wire)["annotations"] == {"a": "x", "b": ""}


def test_repeated_messages_and_strings():
    wire = proto.encode("PodSandboxNetworkStatus", {"ip": "10.3.1.2", "additional_ips": [{"ip": "a"}, {"ip": "b"}]})
    assert wire == b"\x0a\x08" + s("10.3.1.2") + b"\x12\x03\x0a\x01" + s("a") + b"\x12\x03\x0a\x01" + s("b")
    assert proto.encode("DNSConfig", {"servers": ["x", "y"]}) == b"\x0a\x01x\x0a\x01y"


def test_an_empty_message_that_is_present_is_written():
    assert proto.encode("PodSandboxConfig", {"linux": {}}) == b"\x42\x00"
    assert proto.decode("PodSandboxConfig", b"\x42\x00")["linux"] == {
        "cgroup_parent": "", "security_context": None, "sysctls": {}}


# --- decoding ------------------------------------------------------------------
STATUS_REPLY = (
    b"\x0a\x15"                                   # status = 1, 21 bytes
    + b"\x0a\x03" + s("abc")                      #   id = 1
    + b"\x18\x01"                                 #   state = 3: SANDBOX_NOTREADY
    + b"\x20\x01"                                 #   created_at = 4
    + b"\x2a\x0a" + b"\x0a\x08" + s("10.3.1.2")   #   network = 5 { ip = 1 }
    + b"\x12\x0a" + b"\x0a\x04" + s("info") + b"\x12\x02" + s("{}")  # info = 2: {"info": "{}"}
)


def test_pod_sandbox_status_response():
    reply = proto.decode("PodSandboxStatusResponse", STATUS_REPLY)
    status = reply["status"]
    assert (status["id"], status["state"], status["created_at"]) == ("abc", proto.SANDBOX_NOTREADY, 1)
    assert status["network"] == {"ip": "10.3.1.2", "additional_ips": []}
    assert status["metadata"] is None and status["linux"] is None and status["labels"] == {}
    assert reply["info"] == {"info": "{}"}


def test_unknown_fields_of_every_wire_type_are_skipped():
    extra = (b"\x1a\x02\x08\x01"                  # 3 (containers_statuses, not declared here), LEN
             + b"\x20\x96\x01"                    # 4 (timestamp), varint 150
             + b"\x79" + bytes(8)                 # 15, fixed64
             + b"\x85\x01" + bytes(4))            # 16, fixed32
    assert proto.decode("PodSandboxStatusResponse", STATUS_REPLY + extra) == \
        proto.decode("PodSandboxStatusResponse", STATUS_REPLY)


def test_a_message_field_that_occurs_twice_is_merged_and_a_scalar_takes_the_last():
    wire = b"\x0a\x05\x0a\x03" + s("web") + b"\x0a\x04\x12\x02" + s("u1") + b"\x12\x01a\x12\x01b"
    config = proto.decode("PodSandboxConfig", wire)
    assert (config["metadata"]["name"], config["metadata"]["uid"], config["hostname"]) == ("web", "u1", "b")


def test_ints_are_read_at_their_width():
    assert proto.decode("PodSandboxMetadata", b"\x20" + proto.encode_varint(2**32 + 5))["attempt"] == 5
    assert proto.decode("PodIP", b"") == {"ip": ""}


@pytest.mark.parametrize("wire", [
    b"\x0a\x05ab",                 # length past the end
    b"\x08\x01",                   # PodIP.ip (a string) as a varint
    b"\x0b",                       # a group (wire type 3)
    b"\x00\x01",                   # field number 0
    b"\x0a\x02\xff\xfe",           # not UTF-8
])
def test_malformed_input_is_a_decode_error(wire):
    with pytest.raises(proto.DecodeError):
        proto.decode("PodIP", wire)


@pytest.mark.parametrize("message,value", [
    ("PodIP", {"address": "x"}),                     # no such field
    ("PodIP", {"ip": 3}),                            # wrong type
    ("PodSandboxMetadata", {"attempt": -1}),         # uint32 out of range
    ("PortMapping", {"host_port": 2**31}),           # int32 out of range
    ("PodSandboxStatusRequest", {"verbose": 1}),     # bool, not int
    ("PodSandboxConfig", {"labels": {"a": 1}}),      # map<string, string>
    ("PodSandboxConfig", {"port_mappings": {}}),     # repeated needs a list
    ("NoSuchMessage", {}),
])
def test_bad_values_are_an_encode_error(message, value):
    with pytest.raises(proto.EncodeError):
        proto.encode(message, value)


def test_a_full_config_round_trips():
    config = {"metadata": {"name": "n", "uid": "u", "namespace": "ns", "attempt": 3},
              "hostname": "h", "log_directory": "/l",
              "dns_config": {"servers": ["1.1.1.1"], "searches": ["s"], "options": ["ndots:5"]},
              "port_mappings": [{"protocol": proto.UDP, "container_port": 53, "host_port": 5353, "host_ip": "0.0.0.0"}],
              "labels": {"k": "v"}, "annotations": {"a": "b"},
              "linux": {"cgroup_parent": "/kubepods", "sysctls": {"net.ipv4.ip_forward": "1"},
                        "security_context": {"namespace_options": {"network": proto.POD, "pid": proto.CONTAINER},
                                             "run_as_user": {"value": 0}, "privileged": True,
                                             "supplemental_groups": [5, 6],
                                             "seccomp": {"profile_type": proto.UNCONFINED}}}}
    back = proto.decode("PodSandboxConfig", proto.encode("PodSandboxConfig", config))
    assert proto.encode("PodSandboxConfig", back) == proto.encode("PodSandboxConfig", config)
    assert back["port_mappings"][0]["host_port"] == 5353 and back["linux"]["sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert back["linux"]["security_context"]["run_as_user"] == {"value": 0}  # present, at its default


def test_every_message_field_names_a_declared_message():
    for name, fields in proto.MESSAGES.items():
        numbers = [f.number for f in fields]
        assert len(numbers) == len(set(numbers)), name
        for f in fields:
            assert (f.kind == "message") == bool(f.message), (name, f)
            assert f.kind in proto.SCALARS or f.kind in ("message", "map"), (name, f)
            if f.message:
                assert f.message in proto.MESSAGES, (name, f)


# --- the pause image ------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_the_pause_image_archive_is_a_consistent_oci_layout(tmp_path):
    binary = b"\x7fELF not really"
    digests = pause_image.oci_archive(binary, tmp_path / "image.tar", "vnetdp.local/pause:1", arch="amd64")
    with tarfile.open(tmp_path / "image.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    blob = {f"sha256:{name.rsplit('/', 1)[1]}": data for name, data in files.items() if name.startswith("blobs/")}
    assert all(_sha(data) == digest for digest, data in blob.items())
    entry, = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": "vnetdp.local/pause:1",
                                    "org.opencontainers.image.ref.name": "1"}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(blob[entry["digest"]])
    assert entry["digest"] == digests["manifest"] and entry["size"] == len(blob[entry["digest"]])
    config = json.loads(blob[manifest["config"]["digest"]])
    assert config["config"]["Entrypoint"] == ["/pause"] and (config["os"], config["architecture"]) == ("linux", "amd64")
    layer_gz = blob[manifest["layers"][0]["digest"]]
    assert manifest["layers"][0]["mediaType"].endswith("tar+gzip") and manifest["layers"][0]["size"] == len(layer_gz)
    layer = gzip.decompress(layer_gz)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha(layer)]}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        pause, = tar.getmembers()
        assert (pause.name, pause.mode, pause.uid, pause.isreg()) == ("pause", 0o755, 0, True)
        assert tar.extractfile(pause).read() == binary
    again = pause_image.oci_archive(binary, tmp_path / "again.tar", "vnetdp.local/pause:1", arch="amd64")
    assert again == digests and (tmp_path / "again.tar").read_bytes() == (tmp_path / "image.tar").read_bytes()


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_waits_and_exits_0_on_a_stop_signal(tmp_path, sig):
    try:
        binary = pause_image.compile_pause(tmp_path / "pause")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no static libc (libc6-dev): {e.stderr.decode()[-200:]}")
    proc = subprocess.Popen([str(binary)])
    try:
        time.sleep(0.2)
        assert proc.poll() is None
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the containerd wrapper's cgroup mounts --------------------------------------------
HYBRID = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw 0 0
"""


def test_cgroup_mounts_follow_the_host():
    lines = containerd_run.host_cgroup_mounts(HYBRID, controllers={"cpu", "cpuacct", "memory"})
    assert lines == ["mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup",
                     "mkdir -p /sys/fs/cgroup/cpu,cpuacct; mount -t cgroup -o cpu,cpuacct cgroup /sys/fs/cgroup/cpu,cpuacct",
                     "mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd",
                     "mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified"]
    v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
    assert containerd_run.host_cgroup_mounts(v2, controllers={"cpu"}) == ["mount -t cgroup2 cgroup2 /sys/fs/cgroup"]


# --- the client over gRPC, against an in-process server ----------------------------------
def test_the_client_speaks_cri_over_a_unix_socket():
    grpc = pytest.importorskip("grpc")
    from concurrent import futures
    import importlib
    import os
    import tempfile

    spec = importlib.util.spec_from_file_location("vnd_cri", CRI_DIR / "__init__.py",
                                                  submodule_search_locations=[str(CRI_DIR)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["vnd_cri"] = package
    spec.loader.exec_module(package)
    client_module = importlib.import_module("vnd_cri.cri_client")
    wire = importlib.import_module("vnd_cri.cri_proto")
    seen = []

    def answer(method: str, request: bytes, context):
        name = method.rsplit("/", 1)[1]
        seen.append((method, wire.decode(f"{name}Request", request)))
        if name == "Version":
            return wire.encode("VersionResponse", {"version": "0.1.0", "runtime_name": "fake",
                                                   "runtime_api_version": "v1"})
        if name == "RunPodSandbox":
            return wire.encode("RunPodSandboxResponse", {"pod_sandbox_id": "f" * 64})
        if name == "PodSandboxStatus":
            return STATUS_REPLY
        if name == "ListPodSandbox":
            return wire.encode("ListPodSandboxResponse", {"items": [{"id": "f" * 64, "state": 0}]})
        if name == "ImageStatus":
            return b""  # no such image: the reply's image field is absent
        context.abort(grpc.StatusCode.NOT_FOUND, f"{name}: not found")

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method
            return grpc.unary_unary_rpc_method_handler(lambda request, context: answer(method, request, context))

    short = tempfile.mkdtemp(prefix="vnd-cri-")  # a unix socket path must stay under 108 bytes
    path = os.path.join(short, "cri.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    try:
        with client_module.CriClient(path, timeout=10) as client:
            assert client.wait_ready(10)["runtime_name"] == "fake"
            config = client_module.pod_sandbox_config("web", namespace="ns", log_directory="/logs")
            assert client.run_pod_sandbox(config, runtime_handler="h") == "f" * 64
            assert client.created == ["f" * 64]
            assert client.pod_sandbox_status("abc", verbose=True)["status"]["network"]["ip"] == "10.3.1.2"
            assert client.image_status("x") is None
            with pytest.raises(client_module.CriError) as e:
                client.stop_pod_sandbox("gone")
            assert e.value.code == grpc.StatusCode.NOT_FOUND and "not found" in e.value.details
            assert client.remove_all() == []  # NOT_FOUND on stop counts as already gone
    finally:
        server.stop(0)
        shutil.rmtree(short, ignore_errors=True)
    methods = [m for m, _ in seen]
    assert methods[:3] == ["/runtime.v1.RuntimeService/Version", "/runtime.v1.RuntimeService/RunPodSandbox",
                           "/runtime.v1.RuntimeService/PodSandboxStatus"]
    assert "/runtime.v1.ImageService/ImageStatus" in methods
    run = seen[1][1]
    assert run["runtime_handler"] == "h" and run["config"]["metadata"]["namespace"] == "ns"
    assert run["config"]["log_directory"] == "/logs" and run["config"]["dns_config"]["servers"] == ["168.63.129.16"]
    assert seen[2][1] == {"pod_sandbox_id": "abc", "verbose": True}


def test_the_wrapper_keeps_the_lab_and_makes_run_and_var_lib_private():
    from pathlib import Path
    script = containerd_run.wrapper_script(Path("/tmp/t"), Path("/tmp/t/c.toml"), ["/run/vnetdp-lab"],
                                           ["mount -t cgroup2 cgroup2 /sys/fs/cgroup"]).splitlines()
    assert script == ["set -eu",
                      "mkdir -p /tmp/t/keep/0", "mount --rbind /run/vnetdp-lab /tmp/t/keep/0",
                      "mount -t tmpfs -o mode=755 tmpfs /var/lib",
                      "mount -t tmpfs -o mode=755 tmpfs /run",
                      "mkdir -p /run/vnetdp-lab", "mount --move /tmp/t/keep/0 /run/vnetdp-lab",
                      "mount -t cgroup2 cgroup2 /sys/fs/cgroup",
                      f"export PATH={containerd_run.SAFE_PATH}",
                      "exec containerd --config /tmp/t/c.toml"]
    with pytest.raises(ValueError):
        containerd_run.Containerd("ns", Path("/run/x"), keep=[])
