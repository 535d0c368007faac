"""The commands of the ``vnetdp`` network plugin (SPEC §4).

ADD: address from the IPAM plugin, an attachment record, then the endpoint
(one transaction: a failure undoes the endpoint and releases the address).
DEL: endpoint, address, record, each step fine when already gone. CHECK: the
live endpoint, the IPAM allocation and the prevResult agree. GC: every
attachment not listed, and datapath leftovers no record explains. STATUS:
programs loadable and addresses free.
"""
from __future__ import annotations

import ipaddress
import logging
import os

from vnetdp import endpoint, netns
from vnetdp.cni import config
from vnetdp.cni.attachments import Attachments, Record
from vnetdp.cni.delegate import call_ipam
from vnetdp.cni.spec import CniError, Code, Env, Result, valid_attachments, version_result
from vnetdp.datapath.node import NodeDatapath, NodeSetupError
from vnetdp.locks import flocked

log = logging.getLogger("vnetdp.cni")


def _node(conf: config.NetConf) -> NodeDatapath:
    return NodeDatapath(conf.node_settings())


def _as_cni_error(e: BaseException) -> CniError:
    if isinstance(e, CniError):
        return e
    if isinstance(e, netns.NetnsNotFound):
        return CniError(Code.INVALID_ENV, f"CNI_NETNS: {e}")
    if isinstance(e, NodeSetupError):
        return CniError(Code.NODE_SETUP, str(e))
    from vnetdp.datapath.loader import CompileError
    if isinstance(e, CompileError):
        return CniError(Code.NODE_SETUP, f"datapath programs cannot be loaded: {e}",
                        "check kernel headers and bcc (vnetdp install compiles them)")
    return CniError(Code.ENDPOINT_FAILED, f"endpoint setup failed and was rolled back: {e}")


def add(env: Env, conf: config.NetConf) -> dict:
    ipam = Result.parse(call_ipam(env, conf.raw) or {})
    ip4 = next((ip for ip in ipam.ips if ipaddress.ip_interface(ip["address"]).version == 4), None)
    if ip4 is None:
        call_ipam(env, conf.raw, "DEL")
        raise CniError(Code.DELEGATE_FAILED, f"IPAM plugin {conf.ipam['type']} returned no IPv4 address")
    iface = ipaddress.IPv4Interface(ip4["address"])
    atts = Attachments(conf.state_dir)
    record = Record(env.container_id, env.ifname, env.netns, str(iface.ip), conf.ipam["type"],
                    str(iface.network), ip4.get("gateway", ""),
                    env.args.get("K8S_POD_NAMESPACE", ""), env.args.get("K8S_POD_NAME", ""))
    try:
        atts.save(record)
        info = endpoint.add(_node(conf), env.container_id, env.netns, env.ifname, iface.ip, conf.mtu)
    except BaseException as e:
        try:
            call_ipam(env, conf.raw, "DEL")
            atts.remove(env.container_id, env.ifname)
        finally:
            raise _as_cni_error(e) from e
    log.info("ADD %s/%s: %s on %s", env.container_id, env.ifname, iface.ip, info.host_ifname)
    prev = conf.prev_result or Result()
    first = len(prev.interfaces)
    gateway = str(endpoint.POD_GATEWAY)
    result = Result(
        interfaces=prev.interfaces + [{"name": info.host_ifname, "mac": info.host_mac},
                                      {"name": env.ifname, "mac": info.pod_mac, "sandbox": env.netns}],
        ips=prev.ips + [{"address": f"{iface.ip}/32", "gateway": gateway, "interface": first + 1}],
        routes=prev.routes + [{"dst": "0.0.0.0/0", "gw": gateway}],
        dns=conf.raw.get("dns") or prev.dns)
    return result.to_json(conf.version)


def delete(env: Env, conf: config.NetConf) -> None:
    atts = Attachments(conf.state_dir)
    record = atts.get(env.container_id, env.ifname)
    address = ipaddress.IPv4Address(record.address) if record else None
    endpoint.delete(_node(conf), env.container_id, env.ifname, address)
    call_ipam(env, conf.raw, "DEL")
    atts.remove(env.container_id, env.ifname)
    log.info("DEL %s/%s: %s released", env.container_id, env.ifname, address or "no record,")


def check(env: Env, conf: config.NetConf) -> None:
    record = Attachments(conf.state_dir).get(env.container_id, env.ifname)
    if record is None:
        raise CniError(Code.UNKNOWN_CONTAINER, f"no attachment {env.container_id}/{env.ifname} on this node")
    address = ipaddress.IPv4Address(record.address)
    if conf.prev_result:
        listed = {ipaddress.ip_interface(ip["address"]).ip for ip in conf.prev_result.ips}
        if address not in listed:
            raise CniError(Code.CHECK_FAILED, f"prevResult lists {sorted(map(str, listed))}, "
                                              f"the endpoint has {address}")
    call_ipam(env, conf.raw, "CHECK")
    problems = endpoint.check(_node(conf), env.container_id, env.ifname, env.netns, address)
    if problems:
        raise CniError(Code.CHECK_FAILED, "; ".join(problems))


def gc(env: Env, conf: config.NetConf) -> None:
    valid = valid_attachments(conf.raw)
    node = _node(conf)
    atts = Attachments(conf.state_dir)
    for record in atts.all():
        if (record.container_id, record.ifname) not in valid:
            endpoint.delete(node, record.container_id, record.ifname,
                            ipaddress.IPv4Address(record.address))
            atts.remove(record.container_id, record.ifname)
            log.info("GC %s/%s: %s released", record.container_id, record.ifname, record.address)
    keep = {endpoint.host_ifname(r.container_id, r.ifname) for r in atts.all()}
    endpoint.remove_strays(node, keep)
    call_ipam(env, conf.raw, "GC")


def status(env: Env, conf: config.NetConf) -> None:
    node = _node(conf)
    if not node.datapath.is_loaded():
        try:
            import bcc  # noqa: F401  (ADD would compile: it must be able to)
        except ImportError:
            raise CniError(Code.NOT_AVAILABLE, "datapath programs are not pinned and bcc is missing",
                           "install python3-bpfcc and run vnetdp install")
    call_ipam(env, conf.raw, "STATUS")


COMMANDS = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}


def handle(env: Env, conf: dict) -> dict | None:
    if env.command == "VERSION":
        return version_result(conf)
    netconf = config.parse(conf)
    for note in netconf.notes:
        log.info("config: %s", note)
    if env.command in ("ADD", "CHECK") and not os.path.exists(env.netns):
        raise CniError(Code.INVALID_ENV, f"CNI_NETNS {env.netns} does not exist")
    # GC alone: an ADD between its listing and its removal would lose its veth.
    lock = os.path.join(netconf.state_dir, "gc.lock")
    try:
        with flocked(lock, exclusive=env.command == "GC"):
            return COMMANDS[env.command](env, netconf)
    except BaseException as e:
        raise _as_cni_error(e) from e
