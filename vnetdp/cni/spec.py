"""The CNI protocol (spec 0.3.0 to 1.1.0): environment, errors and results.

Everything version-specific lives here: which versions exist, how an error
object looks, and how a result is written for the version the runtime asked
for (0.3.x and 0.4.0 results carry ``version`` on each IP; 1.x do not).
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from enum import IntEnum

CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # as libcni validates it
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")


class Code(IntEnum):
    """Error codes: 1-99 from the CNI spec, 100 and up vnetdp's own."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50        # STATUS: the plugin cannot take ADDs now
    POOL_EXHAUSTED = 100      # no free address: add secondary IPs to the NIC
    STATE_CORRUPT = 101       # the IPAM state file cannot be read
    SOURCE_UNAVAILABLE = 102  # the interface document cannot be fetched or parsed
    NODE_SETUP = 103          # the node cannot carry endpoints (NIC, programs)
    ENDPOINT_FAILED = 104     # plumbing the endpoint failed (rolled back)
    CHECK_FAILED = 105        # CHECK found the live endpoint differs
    DELEGATE_FAILED = 106     # the delegated IPAM plugin failed without a CNI error
    INTERNAL = 107            # a bug: the message and the log say where


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = int(code), msg, details

    def to_json(self, version: str) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Env:
    """The CNI_* variables of one call."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    REQUIRED = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}

    @classmethod
    def parse(cls, environ: dict[str, str]) -> Env:
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(Code.INVALID_ENV, f"CNI_COMMAND is {command!r}, not one of {', '.join(COMMANDS)}")
        missing = [v for v in cls.REQUIRED.get(command, ()) if not environ.get(v)]
        if missing:
            raise CniError(Code.INVALID_ENV, f"{command} needs {', '.join(missing)} in the environment")
        container_id = environ.get("CNI_CONTAINERID", "")
        if container_id and not CONTAINER_ID.fullmatch(container_id):
            raise CniError(Code.INVALID_ENV, f"CNI_CONTAINERID {container_id!r} must be letters, digits, "
                                             "'_', '.' and '-', starting with a letter or digit")
        ifname = environ.get("CNI_IFNAME", "")
        if ifname and (why := ifname_problem(ifname)):
            raise CniError(Code.INVALID_ENV, f"CNI_IFNAME {ifname!r} {why}")
        args = {}
        for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
            key, sep, value = item.partition("=")
            if not sep:
                raise CniError(Code.INVALID_ENV, f"CNI_ARGS item {item!r} is not KEY=VALUE")
            args[key] = value
        return cls(command, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_NETNS", ""),
                   environ.get("CNI_IFNAME", ""), args,
                   tuple(filter(None, environ.get("CNI_PATH", "").split(":"))))


def ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pod's interface name (the kernel's rules, and
    not the pod's loopback); None when it can."""
    if len(name.encode()) > 15:
        return "is longer than 15 bytes"
    if name in (".", ".."):
        return "cannot be . or .."
    if any(c == "/" or c == ":" or c.isspace() for c in name):
        return "cannot contain '/', ':' or whitespace"
    if name == "lo":
        return "is the pod's loopback"
    return None


def parse_config(stdin: bytes) -> dict:
    """The network configuration on stdin, with a known cniVersion."""
    try:
        conf = json.loads(stdin or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(Code.DECODING_FAILURE, f"network configuration on stdin is not JSON: {e}")
    if not isinstance(conf, dict):
        raise CniError(Code.DECODING_FAILURE, "network configuration on stdin must be a JSON object")
    version = conf.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_VERSION,
                       f"cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})")
    return conf


def valid_attachments(conf: dict) -> set[tuple[str, str]]:
    """GC's (container ID, ifname) pairs to keep."""
    items = conf.get("cni.dev/valid-attachments")
    if not isinstance(items, list):
        raise CniError(Code.INVALID_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
    try:
        return {(a["containerID"], a["ifname"]) for a in items}
    except (KeyError, TypeError) as e:
        raise CniError(Code.INVALID_CONFIG, f"cni.dev/valid-attachments entry lacks {e}")


def version_result(conf: dict) -> dict:
    version = conf.get("cniVersion") if conf.get("cniVersion") in SUPPORTED_VERSIONS else "1.1.0"
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass
class Result:
    """A CNI result in version-neutral form."""

    interfaces: list[dict] = field(default_factory=list)  # name, mac, sandbox?
    ips: list[dict] = field(default_factory=list)         # address, gateway?, interface?
    routes: list[dict] = field(default_factory=list)      # dst, gw?
    dns: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict) -> Result:
        """Read a result of any supported version (e.g. a prevResult); ValueError
        naming the part that is not a result."""
        def objects(key: str, needs: str = "") -> list[dict]:
            items = data.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, dict) and (not needs or needs in i)
                                                      for i in items):
                raise ValueError(f"{key} must be a list of objects{f' with {needs!r}' if needs else ''}")
            return items
        ips = [{k: v for k, v in ip.items() if k != "version"} for ip in objects("ips", "address")]
        for ip in ips:
            ipaddress.ip_interface(ip["address"])
        dns = data.get("dns") or {}
        if not isinstance(dns, dict):
            raise ValueError("dns must be an object")
        return cls(list(objects("interfaces", "name")), ips, list(objects("routes", "dst")), dict(dns))

    def to_json(self, version: str) -> dict:
        ips = self.ips
        if version.startswith("0."):
            ips = [{"version": "4", **ip} for ip in ips]
        out = {"cniVersion": version, "interfaces": self.interfaces, "ips": ips,
               "routes": self.routes, "dns": self.dns}
        if version == "0.3.0" or version == "0.3.1":
            out = {k: v for k, v in out.items() if v or k in ("cniVersion", "ips")}
        return out
