"""The network configuration (one conflist entry) as vnetdp reads it (SPEC §4).

Azure's conflists work by changing ``type``: Azure fields with the same meaning
are mapped (``mode`` bridge/transparent both mean "pods on the VNet",
``ipsToRouteViaHost`` sends those destinations to the host stack), fields with
no meaning here are accepted and logged, and fields asking for behaviour
vnetdp lacks are refused with code 2 naming them. Unknown fields are logged.

Node-wide defaults (state and pin directories, the interface document URL)
come from ``VNETDP_STATE_DIR``, ``VNETDP_BPFFS_DIR`` and ``VNETDP_IPAM_URL``,
which ``vnetdp install`` bakes into the installed entry points. Node settings
(``vnetdp.datapath.settings.FIELDS``: master, vnetCidrs, enableSnat, ...) are
the node's: a config that names one only asks for it (``node_asks``), and ADD
refuses a config whose asks the node contradicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vnetdp import defaults
from vnetdp.cni.spec import CniError, Code, Result
from vnetdp.datapath import settings
from vnetdp.datapath.maps import Bandwidth

CNI_FIELDS = {"cniVersion", "name", "type", "ipam", "dns", "capabilities", "runtimeConfig",
              "prevResult", "args", "cni.dev/valid-attachments", "cni.dev/attachments"}
OWN_FIELDS = {"mtu", "stateDir", "bpffsDir", "logFile", "logLevel", *settings.FIELDS}
AZURE_MAPPED = {"mode"}
AZURE_MODES = {"bridge", "transparent"}  # both: pods' addresses on the VNet
AZURE_IGNORED = {"bridge", "networkMonitor", "windowsSettings", "enableExactMatchForPodName",
                 "disableHairpinOnHostInterface", "adapterName", "enableSnatOnHost"}
# Azure fields that ask for something vnetdp does not do, when set to these values.
AZURE_REFUSED = {"multiTenancy": lambda v: bool(v), "ipv6Mode": lambda v: bool(v),
                 "infraVnetAddressSpace": lambda v: bool(v),
                 "podNamespaceForDualNetwork": lambda v: bool(v),
                 "vlanId": lambda v: bool(v)}


@dataclass
class NetConf:
    raw: dict
    version: str
    name: str
    type: str
    ipam: dict
    mtu: int | None = None
    node_asks: dict[str, Any] = field(default_factory=dict)  # NodeSettings attribute -> value
    bandwidth: Bandwidth | None = None  # runtimeConfig.bandwidth (capability "bandwidth"); None: not given
    state_dir: str = defaults.DEFAULT_STATE_DIR
    bpffs_dir: str = defaults.DEFAULT_BPFFS_DIR
    log_file: str | None = None
    log_level: str = "info"
    prev_result: Result | None = None
    notes: list[str] = field(default_factory=list)  # what was accepted and ignored


def _invalid(name: str, why: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"config field {name!r} {why}")


def _typed(conf: dict, name: str, kind: type, default=None):
    value = conf.get(name, default)
    if value is not None and not (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        raise _invalid(name, f"must be a {kind.__name__}, not {type(value).__name__}")
    return value


BANDWIDTH_FIELDS = ("egressRate", "ingressRate", "egressBurst", "ingressBurst")  # bits/s and bits


def _bandwidth(conf: dict) -> Bandwidth | None:
    """The runtime's bandwidth limits (Kubernetes' bandwidth annotations reach
    plugins that declare the capability as runtimeConfig.bandwidth)."""
    runtime = _typed(conf, "runtimeConfig", dict, {})
    asked = runtime.get("bandwidth")
    if asked is None:
        return None
    if not isinstance(asked, dict):
        raise _invalid("runtimeConfig.bandwidth", "must be an object")
    values = []
    for name in BANDWIDTH_FIELDS:
        value = asked.get(name, 0)
        if type(value) is not int or value < 0:
            raise _invalid(f"runtimeConfig.bandwidth.{name}", f"must be a whole number >= 0, not {value!r}")
        values.append(value)
    try:
        return Bandwidth.from_bits(*values)
    except ValueError as e:  # a rate beyond what the shaper can keep
        raise _invalid("runtimeConfig.bandwidth", str(e)) from None


def parse(conf: dict) -> NetConf:
    refused = [k for k, bad in AZURE_REFUSED.items() if k in conf and bad(conf[k])]
    mode = conf.get("mode")
    if mode is not None and mode not in AZURE_MODES:
        refused.append(f"mode={mode}")
    if refused:
        raise CniError(Code.UNSUPPORTED_FIELD, f"vnetdp does not support {', '.join(refused)}",
                       "remove these fields; vnetdp puts pods on the VNet with its own datapath")
    notes = [f"accepted and ignored: {k}" for k in sorted(AZURE_IGNORED & conf.keys())]
    known = CNI_FIELDS | OWN_FIELDS | AZURE_MAPPED | AZURE_IGNORED | AZURE_REFUSED.keys()
    notes += [f"unknown field ignored: {k}" for k in sorted(conf.keys() - known)]
    for required in ("name", "type"):
        if not _typed(conf, required, str):
            raise _invalid(required, "is required (a non-empty string)")
    ipam = _typed(conf, "ipam", dict, {})
    if not ipam.get("type") or not isinstance(ipam["type"], str):
        raise _invalid("ipam", "must name an IPAM plugin in ipam.type (e.g. vnetdp-ipam)")
    if ipam["type"] == conf["type"]:
        raise _invalid("ipam", f"names the network plugin {conf['type']!r} as its own IPAM: "
                               "use vnetdp-ipam (or another IPAM plugin)")
    _typed(conf, "dns", dict)
    mtu = _typed(conf, "mtu", int)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise _invalid("mtu", "must be between 68 and 65535")
    try:
        node_asks = settings.parse(conf)
    except settings.SettingError as e:
        raise _invalid(e.field, e.why)
    prev = _typed(conf, "prevResult", dict)
    try:
        prev_result = Result.parse(prev) if prev else None
    except (TypeError, ValueError, AttributeError) as e:
        raise _invalid("prevResult", f"is not a CNI result: {e}")
    return NetConf(
        raw=conf, version=conf["cniVersion"], name=conf["name"], type=conf["type"], ipam=ipam,
        mtu=mtu, node_asks=node_asks, bandwidth=_bandwidth(conf), state_dir=defaults.state_dir({"stateDir": _typed(conf, "stateDir", str)}),
        bpffs_dir=defaults.bpffs_dir({"bpffsDir": _typed(conf, "bpffsDir", str)}),
        log_file=_typed(conf, "logFile", str), log_level=_typed(conf, "logLevel", str, "info"),
        prev_result=prev_result, notes=notes)
