"""The network configuration (one conflist entry) as vnetdp reads it (SPEC §4).

Azure's conflists work by changing ``type``: Azure fields with the same meaning
are mapped (``mode`` bridge/transparent both mean "pods on the VNet",
``ipsToRouteViaHost`` sends those destinations to the host stack), fields with
no meaning here are accepted and logged, and fields asking for behaviour
vnetdp lacks are refused with code 2 naming them. Unknown fields are logged.

Node-wide defaults (state and pin directories, the interface document URL)
come from ``VNETDP_STATE_DIR``, ``VNETDP_BPFFS_DIR`` and ``VNETDP_IPAM_URL``,
which ``vnetdp install`` bakes into the installed entry points.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from vnetdp.cni.spec import CniError, Code, Result
from vnetdp.datapath.node import NodeSettings
from vnetdp import defaults

CNI_FIELDS = {"cniVersion", "name", "type", "ipam", "dns", "capabilities", "runtimeConfig",
              "prevResult", "args", "cni.dev/valid-attachments", "cni.dev/attachments"}
OWN_FIELDS = {"master", "mtu", "vnetCidrs", "enableSnat", "localSwitching", "nicAttach",
              "snatPorts", "stateDir", "bpffsDir", "logFile", "logLevel"}
AZURE_MAPPED = {"mode", "ipsToRouteViaHost"}
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
    master: str | None = None
    mtu: int | None = None
    vnet_cidrs: list[str] | None = None
    host_destinations: list[str] = field(default_factory=list)
    enable_snat: bool = True
    local_switching: bool = True
    nic_attach: str = "tc"
    snat_ports: tuple[int, int] = (61000, 65535)
    state_dir: str = defaults.DEFAULT_STATE_DIR
    bpffs_dir: str = defaults.DEFAULT_BPFFS_DIR
    log_file: str | None = None
    log_level: str = "info"
    prev_result: Result | None = None
    notes: list[str] = field(default_factory=list)  # what was accepted and ignored

    def node_settings(self) -> NodeSettings:
        return NodeSettings(bpffs_dir=self.bpffs_dir, state_dir=self.state_dir, master=self.master,
                            vnet_cidrs=self.vnet_cidrs, host_destinations=self.host_destinations,
                            local_switching=self.local_switching, enable_snat=self.enable_snat,
                            snat_ports=self.snat_ports, nic_attach=self.nic_attach)


def _invalid(name: str, why: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"config field {name!r} {why}")


def _typed(conf: dict, name: str, kind: type, default=None):
    value = conf.get(name, default)
    if value is not None and not (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        raise _invalid(name, f"must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _networks(conf: dict, name: str, host: bool = False) -> list[str] | None:
    value = _typed(conf, name, list)
    if value is None:
        return None
    try:
        return [str(ipaddress.IPv4Network(f"{v}/32" if host and "/" not in str(v) else v, strict=False))
                for v in value]
    except (ValueError, TypeError) as e:
        raise _invalid(name, f"must list IPv4 {'addresses' if host else 'prefixes'}: {e}")


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
    nic_attach = _typed(conf, "nicAttach", str, "tc")
    if nic_attach not in ("tc", "xdp"):
        raise _invalid("nicAttach", "must be tc or xdp")
    ports = _typed(conf, "snatPorts", list, [61000, 65535])
    if len(ports) != 2 or not all(type(p) is int for p in ports) or not 1 <= ports[0] <= ports[1] <= 65535:
        raise _invalid("snatPorts", "must be [first, last] ports")
    prev = _typed(conf, "prevResult", dict)
    try:
        prev_result = Result.parse(prev) if prev else None
    except (TypeError, ValueError, AttributeError) as e:
        raise _invalid("prevResult", f"is not a CNI result: {e}")
    return NetConf(
        raw=conf, version=conf["cniVersion"], name=conf["name"], type=conf["type"], ipam=ipam, master=_typed(conf, "master", str),
        mtu=mtu, vnet_cidrs=_networks(conf, "vnetCidrs"),
        host_destinations=_networks(conf, "ipsToRouteViaHost", host=True) or [],
        enable_snat=_typed(conf, "enableSnat", bool, True),
        local_switching=_typed(conf, "localSwitching", bool, True), nic_attach=nic_attach,
        snat_ports=(ports[0], ports[1]), state_dir=defaults.state_dir({"stateDir": _typed(conf, "stateDir", str)}),
        bpffs_dir=defaults.bpffs_dir({"bpffsDir": _typed(conf, "bpffsDir", str)}),
        log_file=_typed(conf, "logFile", str), log_level=_typed(conf, "logLevel", str, "info"),
        prev_result=prev_result, notes=notes)
