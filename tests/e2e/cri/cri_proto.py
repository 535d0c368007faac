"""The protobuf wire format for the few CRI (``runtime.v1``) messages the
end-to-end tests send to containerd, written here: no protoc, no generated
code, no ``protobuf`` package.

Messages are plain dicts keyed by the .proto field names; ``encode(name,
value)`` and ``decode(name, data)`` take the message's name. The schema below
carries the field numbers of Kubernetes' published
``k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`` (package ``runtime.v1``);
those numbers are also the ones of the copy containerd 1.6 vendors
(cri-api v0.25.0). Only the fields the tests need are declared: unknown fields
in a reply are skipped, as every protobuf reader does.

Proto3 rules kept here: a scalar equal to its default (0, "", false) is not
written; repeated numbers are written packed and read packed or not; a map is
a repeated entry message (key = 1, value = 2), written with both fields and in
key order; a message field given as None is absent, given as a dict (even
empty) it is present; a singular message that occurs twice on the wire is the
merge of both (its encodings are concatenated, then read once).
"""
from __future__ import annotations

from dataclasses import dataclass

# Wire types.
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

_U64 = 1 << 64


class DecodeError(ValueError):
    pass


class EncodeError(ValueError):
    pass


# --- the wire ---------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    """An unsigned varint; a negative number is its 64-bit two's complement
    (how int32, int64 and enums are written: ten bytes when negative)."""
    if n < 0:
        n += _U64
    if not 0 <= n < _U64:
        raise EncodeError(f"{n} does not fit in 64 bits")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); at most ten bytes, 64 bits."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & (_U64 - 1), pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than ten bytes")


def tag(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + encode_varint(len(payload)) + payload


def read_fields(data: bytes):
    """Each field on the wire as (number, wire type, value): an int for
    VARINT, bytes for LEN, I64 and I32 (their raw little-endian bytes)."""
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(data, pos)
        elif wire_type == LEN:
            size, pos = decode_varint(data, pos)
            if pos + size > len(data):
                raise DecodeError(f"field {number}: {size} bytes announced, {len(data) - pos} left")
            value, pos = data[pos:pos + size], pos + size
        elif wire_type in (I64, I32):
            size = 8 if wire_type == I64 else 4
            if pos + size > len(data):
                raise DecodeError(f"field {number}: truncated fixed{size * 8}")
            value, pos = data[pos:pos + size], pos + size
        else:  # groups (3, 4) are deprecated and no CRI message has one; 6 and 7 do not exist
            raise DecodeError(f"field {number}: unsupported wire type {wire_type}")
        yield number, wire_type, value


# --- the schema -------------------------------------------------------------
SCALARS = {"string": "", "bytes": b"", "bool": False, "int32": 0, "int64": 0, "uint32": 0, "uint64": 0,
           "enum": 0}
NUMERIC = {"bool", "int32", "int64", "uint32", "uint64", "enum"}
_RANGES = {"int32": (-(1 << 31), 1 << 31), "enum": (-(1 << 31), 1 << 31), "int64": (-(1 << 63), 1 << 63),
           "uint32": (0, 1 << 32), "uint64": (0, 1 << 64)}


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str                # a key of SCALARS, "message" or "map" (map<string, string>)
    message: str = ""        # the message type of a "message" field
    repeated: bool = False


def _f(number: int, name: str, kind: str, message: str = "", repeated: bool = False) -> Field:
    return Field(number, name, kind, message, repeated)


# Field numbers: kubernetes/cri-api, pkg/apis/runtime/v1/api.proto.
MESSAGES: dict[str, tuple[Field, ...]] = {
    "VersionRequest": (_f(1, "version", "string"),),
    "VersionResponse": (_f(1, "version", "string"), _f(2, "runtime_name", "string"),
                        _f(3, "runtime_version", "string"), _f(4, "runtime_api_version", "string")),
    "DNSConfig": (_f(1, "servers", "string", repeated=True), _f(2, "searches", "string", repeated=True),
                  _f(3, "options", "string", repeated=True)),
    "PortMapping": (_f(1, "protocol", "enum"), _f(2, "container_port", "int32"), _f(3, "host_port", "int32"),
                    _f(4, "host_ip", "string")),
    "NamespaceOption": (_f(1, "network", "enum"), _f(2, "pid", "enum"), _f(3, "ipc", "enum"),
                        _f(4, "target_id", "string")),
    "Int64Value": (_f(1, "value", "int64"),),
    "SecurityProfile": (_f(1, "profile_type", "enum"), _f(2, "localhost_ref", "string")),
    "LinuxSandboxSecurityContext": (
        _f(1, "namespace_options", "message", "NamespaceOption"), _f(3, "run_as_user", "message", "Int64Value"),
        _f(4, "readonly_rootfs", "bool"), _f(5, "supplemental_groups", "int64", repeated=True),
        _f(6, "privileged", "bool"), _f(8, "run_as_group", "message", "Int64Value"),
        _f(9, "seccomp", "message", "SecurityProfile")),
    "LinuxPodSandboxConfig": (_f(1, "cgroup_parent", "string"),
                              _f(2, "security_context", "message", "LinuxSandboxSecurityContext"),
                              _f(3, "sysctls", "map")),
    "PodSandboxMetadata": (_f(1, "name", "string"), _f(2, "uid", "string"), _f(3, "namespace", "string"),
                           _f(4, "attempt", "uint32")),
    "PodSandboxConfig": (_f(1, "metadata", "message", "PodSandboxMetadata"), _f(2, "hostname", "string"),
                         _f(3, "log_directory", "string"), _f(4, "dns_config", "message", "DNSConfig"),
                         _f(5, "port_mappings", "message", "PortMapping", repeated=True),
                         _f(6, "labels", "map"), _f(7, "annotations", "map"),
                         _f(8, "linux", "message", "LinuxPodSandboxConfig")),
    "RunPodSandboxRequest": (_f(1, "config", "message", "PodSandboxConfig"), _f(2, "runtime_handler", "string")),
    "RunPodSandboxResponse": (_f(1, "pod_sandbox_id", "string"),),
    "StopPodSandboxRequest": (_f(1, "pod_sandbox_id", "string"),),
    "StopPodSandboxResponse": (),
    "RemovePodSandboxRequest": (_f(1, "pod_sandbox_id", "string"),),
    "RemovePodSandboxResponse": (),
    "PodSandboxStatusRequest": (_f(1, "pod_sandbox_id", "string"), _f(2, "verbose", "bool")),
    "PodIP": (_f(1, "ip", "string"),),
    "PodSandboxNetworkStatus": (_f(1, "ip", "string"), _f(2, "additional_ips", "message", "PodIP", repeated=True)),
    "Namespace": (_f(2, "options", "message", "NamespaceOption"),),
    "LinuxPodSandboxStatus": (_f(1, "namespaces", "message", "Namespace"),),
    "PodSandboxStatus": (_f(1, "id", "string"), _f(2, "metadata", "message", "PodSandboxMetadata"),
                         _f(3, "state", "enum"), _f(4, "created_at", "int64"),
                         _f(5, "network", "message", "PodSandboxNetworkStatus"),
                         _f(6, "linux", "message", "LinuxPodSandboxStatus"), _f(7, "labels", "map"),
                         _f(8, "annotations", "map"), _f(9, "runtime_handler", "string")),
    "PodSandboxStatusResponse": (_f(1, "status", "message", "PodSandboxStatus"), _f(2, "info", "map")),
    "PodSandboxStateValue": (_f(1, "state", "enum"),),
    "PodSandboxFilter": (_f(1, "id", "string"), _f(2, "state", "message", "PodSandboxStateValue"),
                         _f(3, "label_selector", "map")),
    "ListPodSandboxRequest": (_f(1, "filter", "message", "PodSandboxFilter"),),
    "PodSandbox": (_f(1, "id", "string"), _f(2, "metadata", "message", "PodSandboxMetadata"), _f(3, "state", "enum"),
                   _f(4, "created_at", "int64"), _f(5, "labels", "map"), _f(6, "annotations", "map"),
                   _f(7, "runtime_handler", "string")),
    "ListPodSandboxResponse": (_f(1, "items", "message", "PodSandbox", repeated=True),),
    "ImageSpec": (_f(1, "image", "string"), _f(2, "annotations", "map")),
    "ImageStatusRequest": (_f(1, "image", "message", "ImageSpec"), _f(2, "verbose", "bool")),
    "Image": (_f(1, "id", "string"), _f(2, "repo_tags", "string", repeated=True),
              _f(3, "repo_digests", "string", repeated=True), _f(4, "size", "uint64")),
    "ImageStatusResponse": (_f(1, "image", "message", "Image"), _f(2, "info", "map")),
}

# Enums (same source).
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1                    # PodSandboxState
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3                  # NamespaceMode
TCP, UDP, SCTP = 0, 1, 2                                   # Protocol
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = 0, 1, 2           # SecurityProfile.ProfileType


def fields_of(message: str) -> tuple[Field, ...]:
    try:
        return MESSAGES[message]
    except KeyError:
        raise EncodeError(f"unknown message {message!r}") from None


# --- encoding ---------------------------------------------------------------
def _scalar_payload(field: Field, value) -> tuple[int, bytes]:
    """(wire type, bytes after the tag) of one scalar value."""
    kind = field.kind
    if kind == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{field.name}: expected str, got {type(value).__name__}")
        raw = value.encode()
        return LEN, encode_varint(len(raw)) + raw
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray)):
            raise EncodeError(f"{field.name}: expected bytes, got {type(value).__name__}")
        return LEN, encode_varint(len(value)) + bytes(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise EncodeError(f"{field.name}: expected bool, got {type(value).__name__}")
        return VARINT, encode_varint(int(value))
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{field.name}: expected int, got {type(value).__name__}")
    low, high = _RANGES[kind]
    if not low <= value < high:
        raise EncodeError(f"{field.name}: {value} is out of range for {kind}")
    return VARINT, encode_varint(value)


def _encode_field(field: Field, value) -> bytes:
    if field.kind == "map":
        if not isinstance(value, dict):
            raise EncodeError(f"{field.name}: expected a dict")
        out = b""
        for k in sorted(value):
            if not isinstance(k, str) or not isinstance(value[k], str):
                raise EncodeError(f"{field.name}: map<string, string> keys and values must be str")
            key, val = k.encode(), value[k].encode()
            entry = length_delimited(1, key) + length_delimited(2, val)
            out += length_delimited(field.number, entry)
        return out
    if field.repeated:
        if not isinstance(value, (list, tuple)):
            raise EncodeError(f"{field.name}: repeated field needs a list")
        if field.kind == "message":
            return b"".join(length_delimited(field.number, encode(field.message, v)) for v in value)
        if field.kind in NUMERIC:  # packed, proto3's default for repeated numbers
            packed = b"".join(_scalar_payload(field, v)[1] for v in value)
            return length_delimited(field.number, packed) if packed else b""
        return b"".join(tag(field.number, LEN) + _scalar_payload(field, v)[1] for v in value)
    if field.kind == "message":
        if not isinstance(value, dict):
            raise EncodeError(f"{field.name}: expected a dict (message {field.message})")
        return length_delimited(field.number, encode(field.message, value))
    if value == SCALARS[field.kind] and type(value) is type(SCALARS[field.kind]):
        return b""  # proto3: a scalar at its default is not written
    wire_type, payload = _scalar_payload(field, value)
    return tag(field.number, wire_type) + payload


def encode(message: str, value: dict) -> bytes:
    """The wire bytes of ``value`` (a dict of field names), fields in number order."""
    fields = fields_of(message)
    if not isinstance(value, dict):
        raise EncodeError(f"{message}: expected a dict")
    known = {f.name for f in fields}
    unknown = sorted(set(value) - known)
    if unknown:
        raise EncodeError(f"{message} has no field {', '.join(unknown)}")
    out = b""
    for field in sorted(fields, key=lambda f: f.number):
        v = value.get(field.name)
        if v is None:
            continue
        out += _encode_field(field, v)
    return out


# --- decoding ---------------------------------------------------------------
def default_of(field: Field):
    if field.kind == "map":
        return {}
    if field.repeated:
        return []
    if field.kind == "message":
        return None
    return SCALARS[field.kind]


def _from_varint(field: Field, n: int):
    kind = field.kind
    if kind == "bool":
        return n != 0
    if kind in ("int32", "enum"):
        n &= 0xFFFFFFFF  # the low 32 bits, as every reader of int32 does
        return n - (1 << 32) if n >= 1 << 31 else n
    if kind == "int64":
        return n - _U64 if n >= 1 << 63 else n
    if kind == "uint32":
        return n & 0xFFFFFFFF
    return n  # uint64


def _decode_map_entry(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, wire_type, raw in read_fields(data):
        if number in (1, 2):
            if wire_type != LEN:
                raise DecodeError(f"map entry field {number}: wire type {wire_type}, expected {LEN}")
            text = _utf8(raw)
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"string field is not UTF-8: {e}") from None


def decode(message: str, data: bytes) -> dict:
    """The dict of ``data``: every declared field, at its default when absent
    (None for an absent message); unknown fields skipped."""
    fields = {f.number: f for f in fields_of(message)}
    out = {f.name: default_of(f) for f in fields.values()}
    pending: dict[str, list[bytes]] = {}  # singular messages: merged by concatenation
    for number, wire_type, raw in read_fields(bytes(data)):
        field = fields.get(number)
        if field is None:
            continue
        if field.kind == "map":
            if wire_type != LEN:
                raise DecodeError(f"{message}.{field.name}: wire type {wire_type}, expected {LEN}")
            k, v = _decode_map_entry(raw)
            out[field.name][k] = v
        elif field.kind == "message":
            if wire_type != LEN:
                raise DecodeError(f"{message}.{field.name}: wire type {wire_type}, expected {LEN}")
            if field.repeated:
                out[field.name].append(decode(field.message, raw))
            else:
                pending.setdefault(field.name, []).append(raw)
        elif field.kind in NUMERIC:
            if wire_type == VARINT:
                values = [_from_varint(field, raw)]
            elif wire_type == LEN and field.repeated:  # packed
                values, pos = [], 0
                while pos < len(raw):
                    n, pos = decode_varint(raw, pos)
                    values.append(_from_varint(field, n))
            else:
                raise DecodeError(f"{message}.{field.name}: wire type {wire_type}, expected {VARINT}")
            if field.repeated:
                out[field.name].extend(values)
            else:
                out[field.name] = values[-1]  # the last one wins
        else:  # string, bytes
            if wire_type != LEN:
                raise DecodeError(f"{message}.{field.name}: wire type {wire_type}, expected {LEN}")
            value = _utf8(raw) if field.kind == "string" else bytes(raw)
            if field.repeated:
                out[field.name].append(value)
            else:
                out[field.name] = value
    for name, chunks in pending.items():
        field = next(f for f in fields.values() if f.name == name)
        out[name] = decode(field.message, b"".join(chunks))
    return out
