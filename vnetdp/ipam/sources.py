"""Where addresses come from: the host agent's interface document (``azure``,
over HTTP), the same document in a file (``file``, XML or JSON), or ranges in
the configuration (``static``). Each source yields the pools of one NIC."""
from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vnetdp.ipam.errors import BadIpamConfig, SourceUnavailable, StateIoError

DEFAULT_URL = "http://168.63.129.16/machine/plugins?comp=nmagent&type=getinterfaceinfov1"
HTTP_TIMEOUT_S = 2.0     # connect and each read
FETCH_DEADLINE_S = 5.0   # the whole document
MAX_DOCUMENT = 1 << 20


@dataclass(frozen=True)
class Pool:
    """One subnet's addresses that pods may have."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    addresses: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class Interface:
    mac: str                 # 12 lowercase hex digits, or "*"
    primary: bool
    subnets: list[tuple[ipaddress.IPv4Network, list[tuple[ipaddress.IPv4Address, bool]]]]


def _bool(value) -> bool:
    return str(value).lower() == "true"


def _mac(value: str) -> str:
    return "*" if value == "*" else value.replace(":", "").replace("-", "").lower()


def parse_xml(text: str) -> list[Interface]:
    root = ET.fromstring(text)
    if root.tag != "Interfaces":
        raise ValueError(f"root element is <{root.tag}>, not <Interfaces>")
    return [Interface(_mac(i.get("MacAddress", "")), _bool(i.get("IsPrimary")),
                      [(ipaddress.IPv4Network(s.get("Prefix"), strict=False),
                        [(ipaddress.IPv4Address(a.get("Address")), _bool(a.get("IsPrimary")))
                         for a in s.findall("IPAddress")])
                       for s in i.findall("IPSubnet")])
            for i in root.findall("Interface")]


def parse_json(text: str) -> list[Interface]:
    return [Interface(_mac(i.get("MacAddress", "")), _bool(i.get("IsPrimary")),
                      [(ipaddress.IPv4Network(s["Prefix"], strict=False),
                        [(ipaddress.IPv4Address(a["Address"]), _bool(a.get("IsPrimary")))
                         for a in s.get("IPAddresses", [])])
                       for s in i.get("IPSubnets", [])])
            for i in json.loads(text)["Interfaces"]]


def parse_document(text: str) -> list[Interface]:
    """An interface document in either form."""
    try:
        return parse_xml(text) if text.lstrip().startswith("<") else parse_json(text)
    except (ValueError, KeyError, TypeError, AttributeError, ET.ParseError) as e:
        raise SourceUnavailable(f"interface document is not valid: {e}")


def pools_of(interfaces: list[Interface], nic_mac: str | None) -> list[Pool]:
    """The pools of the NIC with ``nic_mac`` (an entry "*" matches any), or of
    the primary interface when no MAC is given. Primary addresses are the host's."""
    if nic_mac:
        mac = _mac(nic_mac)
        chosen = [i for i in interfaces if i.mac == mac] or [i for i in interfaces if i.mac == "*"]
    else:
        chosen = [i for i in interfaces if i.primary] or interfaces[:1]
    if not chosen:
        raise SourceUnavailable(
                       f"the interface document lists no interface with MAC {nic_mac}")
    return [Pool(net, next(net.hosts()), tuple(a for a, primary in addrs if not primary))
            for net, addrs in chosen[0].subnets]


ENVIRONMENTS = ("azure", "file", "static")


def check_source(ipam: dict) -> None:
    """Refuse an ipam section whose source could never be read as configured."""
    env = ipam.get("environment", "azure")
    if env not in ENVIRONMENTS:
        raise BadIpamConfig(f"ipam.environment {env!r} is not {', '.join(ENVIRONMENTS)}")
    url = ipam.get("url", DEFAULT_URL)
    if env == "azure" and (not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https")):
        raise BadIpamConfig(f"ipam.url {url!r} must be an http:// or https:// URL")
    if env == "file" and not isinstance(ipam.get("file"), str):
        raise BadIpamConfig("ipam.environment file needs ipam.file (a path)")


def fetch_document(url: str, deadline_s: float = FETCH_DEADLINE_S) -> str:
    """The document at ``url``, whole within ``deadline_s`` however slowly
    the server sends it."""
    hint = "the host agent serves it; check that the VM can reach it, or set ipam.url"
    deadline = time.monotonic() + deadline_s
    chunks, size = [], 0
    try:
        with urllib.request.urlopen(url, timeout=min(HTTP_TIMEOUT_S, deadline_s)) as resp:
            while chunk := resp.read1(65536):
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline or size > MAX_DOCUMENT:
                    raise SourceUnavailable(f"the interface document from {url} did not arrive whole within "
                                            f"{deadline_s:g} s and {MAX_DOCUMENT} bytes", hint)
        return b"".join(chunks).decode()
    except UnicodeDecodeError as e:
        raise SourceUnavailable(f"the interface document from {url} is not text: {e}", hint)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SourceUnavailable(f"cannot fetch the interface document from {url}: {e}", hint)


def static_pools(ranges) -> list[Pool]:
    """host-local style ranges: a list of range sets, or a flat list of ranges."""
    pools = []
    try:
        for rng in (r for item in ranges for r in (item if isinstance(item, list) else [item])):
            net = ipaddress.IPv4Network(rng["subnet"], strict=False)
            hosts = list(net.hosts())
            start = ipaddress.IPv4Address(rng.get("rangeStart", hosts[0]))
            end = ipaddress.IPv4Address(rng.get("rangeEnd", hosts[-1]))
            gw = ipaddress.IPv4Address(rng.get("gateway", hosts[0]))
            pools.append(Pool(net, gw, tuple(a for a in hosts if start <= a <= end and a != gw)))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadIpamConfig(f"ipam.ranges is not valid: {e}")
    return pools


def load_pools(ipam: dict, nic_mac: str | None) -> list[Pool]:
    """The pools ``ipam`` (the config's ipam section) describes."""
    env = ipam.get("environment", "azure")
    if env == "azure":
        return pools_of(parse_document(fetch_document(ipam.get("url", DEFAULT_URL))), nic_mac)
    if env == "file":
        try:
            with open(ipam["file"], errors="strict") as f:
                text = f.read()
        except KeyError:
            raise BadIpamConfig("ipam.environment file needs ipam.file")
        except OSError as e:
            raise StateIoError(f"cannot read ipam.file: {e}")
        except UnicodeDecodeError as e:
            raise SourceUnavailable(f"ipam.file {ipam['file']} is not text: {e}")
        return pools_of(parse_document(text), nic_mac)
    if env == "static":
        return static_pools(ipam.get("ranges") or [])
    raise BadIpamConfig(f"ipam.environment {env!r} is not {', '.join(ENVIRONMENTS)}")
