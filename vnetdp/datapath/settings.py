"""The node's settings: what holds for every pod on a node (the NIC, the VNet
prefixes, SNAT and its ports, local switching, the NIC hook, the cloud
endpoints pods may reach, where pods' public IPs are learnt). They belong
to the node, not to a network configuration: kept in
``<state-dir>/node.json``, written only by the operator's commands
(``vnetdp install --set``, ``vnetdp node set``), each change one atomic file
write applied under the node lock. A CNI config may
repeat a setting (existing conflists do); one that contradicts the node's
is refused, so two networks can never fight over the node.

Names are the CNI config's (``enableSnat``), values JSON; ``FIELDS`` maps
them onto ``NodeSettings`` attributes and checks them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vnetdp.files import atomic_write

SETTINGS_FILE = "node.json"


class SettingError(ValueError):
    """A setting's value is not valid (``field`` names it)."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field!r} {why}")
        self.field, self.why = field, why


def _typed(kind: type) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if type(value) is not kind:
            raise SettingError(name, f"must be a {kind.__name__}, not {type(value).__name__}")
        return value
    return check


def _prefixes(host: bool) -> Callable[[str, Any], list[str]]:
    def check(name: str, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise SettingError(name, f"must be a list, not {type(value).__name__}")
        try:
            return sorted({str(ipaddress.IPv4Network(f"{v}/32" if host and "/" not in str(v) else v,
                                                     strict=False)) for v in value})
        except (ValueError, TypeError) as e:
            raise SettingError(name, f"must list IPv4 {'addresses' if host else 'prefixes'}: {e}")
    return check


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise SettingError(name, f"must be one of {', '.join(allowed)}, not {value!r}")
        return value
    return check


def _ports(name: str, value: Any) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(type(p) is int for p in value)
            and 1 <= value[0] <= value[1] <= 65535):
        raise SettingError(name, f"must be [first, last] ports, not {value!r}")
    return (value[0], value[1])


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or urllib.parse.urlsplit(value).scheme not in ("http", "https"):
        raise SettingError(name, f"must be an http:// or https:// URL, not {value!r}")
    return value


def _count(name: str, value: Any) -> int:
    if type(value) is not int or value < 0:
        raise SettingError(name, f"must be a whole number >= 0, not {value!r}")
    return value


@dataclass(frozen=True)
class Field:
    attribute: str                              # on NodeSettings
    check: Callable[[str, Any], Any]            # (name, JSON value) -> the attribute's value
    default: Any


#: config name -> the node setting it is
FIELDS: dict[str, Field] = {
    "master": Field("master", _typed(str), None),                      # default: the default route's NIC
    "vnetCidrs": Field("vnet_cidrs", _prefixes(host=False), None),       # default: the NIC's subnets
    "ipsToRouteViaHost": Field("host_destinations", _prefixes(host=True), []),
    "enableSnat": Field("enable_snat", _typed(bool), True),
    "localSwitching": Field("local_switching", _typed(bool), True),
    "nicAttach": Field("nic_attach", _choice("tc", "xdp"), "tc"),
    "snatPorts": Field("snat_ports", _ports, (61000, 65535)),
    "allowHostAgent": Field("allow_host_agent", _typed(bool), False),
    "allowMetadata": Field("allow_metadata", _typed(bool), False),
    # A quarter of the SNAT table: no one pod can fill it (0: no limit).
    "snatFlowsPerEndpoint": Field("snat_flows_per_endpoint", _count, 16384),
    # Unset: pods' addresses have no public IPs (vnetdp.public_ips).
    "metadataUrl": Field("metadata_url", _url, None),
}


def parse(values: dict[str, Any]) -> dict[str, Any]:
    """The node settings among ``values`` (config names, JSON values), as
    attribute -> checked value; other keys are ignored."""
    return {f.attribute: f.check(name, values[name]) for name, f in FIELDS.items() if name in values}


def _as_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class NodeSettingsFile:
    """``<state-dir>/node.json``: the node's settings as the operator set them."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, SETTINGS_FILE)

    def load(self) -> dict[str, Any]:
        """attribute -> value for every setting, the defaults filled in."""
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            saved = {}
        except ValueError as e:
            raise SettingError(self.path, f"is not JSON: {e}")
        if not isinstance(saved, dict):
            raise SettingError(self.path, "must hold a JSON object")
        unknown = saved.keys() - FIELDS.keys()
        if unknown:
            raise SettingError(self.path, f"has unknown settings {sorted(unknown)}")
        return {**{f.attribute: f.default for f in FIELDS.values()}, **parse(saved)}

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Set ``changes`` (config names, JSON values; None resets one to its
        default) in one atomic write; the settings after it."""
        loaded = self.load()
        current = {name: _as_json(loaded[f.attribute]) for name, f in FIELDS.items()}
        unknown = changes.keys() - FIELDS.keys()
        if unknown:
            raise SettingError(", ".join(sorted(unknown)), f"is not a node setting ({', '.join(FIELDS)})")
        merged = {**current, **changes}
        merged = {k: v for k, v in merged.items() if v is not None and v != _as_json(FIELDS[k].default)}
        parse(merged)  # refuse the whole change if any value is bad
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_write(self.path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
        return self.load()


def conflicts(node: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """What a network configuration asks (attribute -> value) that the node's
    settings contradict, each said with both values."""
    names = {f.attribute: name for name, f in FIELDS.items()}
    return [f"{names[a]} is {_as_json(v)!r} in the config but {_as_json(node[a])!r} on this node"
            for a, v in asked.items() if node[a] != v]
