"""The commands of the ``vnetdp`` network plugin (SPEC §4).

ADD: address from the IPAM plugin, an pod record, then the endpoint
(one transaction: a failure undoes the endpoint and releases the address).
DEL: endpoint, address, record, each step fine when already gone. CHECK: the
live endpoint, the IPAM allocation and the prevResult agree. GC: every
attachment not listed, and datapath leftovers no record explains. STATUS:
programs loadable and addresses free.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
from collections.abc import Iterator

from pyroute2 import IPRoute

from vnetdp import defaults, endpoint, links, naming, netns, rtnl
from vnetdp.cni import invoke
from vnetdp.cni.invoke import delegate
from vnetdp.cni.logs import phase
from vnetdp.cni.spec import CniError, Code, Env, Result, valid_attachments, version_result
from vnetdp.datapath import settings
from vnetdp.datapath.node import Node, NodeSettings, NodeSetupError
from vnetdp.locks import WAIT_S as LOCK_WAIT_S
from vnetdp.locks import LockTimeout, flocked
from vnetdp.network import config
from vnetdp.network.records import PodRecord, PodRecords, StateDirError

log = logging.getLogger("vnetdp.cni")
LOCKS_DIR = "locks"  # one lock file per attachment, in the state directory


def _node(conf: config.NetConf, asked: bool = False) -> Node:
    """The node's datapath with the node's settings; ``asked``: refuse a
    config that contradicts them (ADD), rather than ignore what it says."""
    try:
        node = settings.NodeSettingsFile(conf.state_dir).load()
    except settings.SettingError as e:
        raise CniError(Code.NODE_SETUP, f"node settings: {e}", "correct them with 'vnetdp node set'")
    problems = settings.conflicts(node, conf.node_asks) if asked else []
    if problems:
        raise CniError(Code.INVALID_CONFIG, "the config contradicts this node's settings: " + "; ".join(problems),
                       "node settings belong to the node: change them with 'vnetdp node set' "
                       "('vnetdp node show' lists them) or leave them out of the config")
    return Node(NodeSettings(bpffs_dir=conf.bpffs_dir, state_dir=conf.state_dir, **node))


def call_ipam(env: Env, conf: dict, command: str | None = None) -> dict | None:
    """The configured IPAM plugin's result for ``command`` (default: env's)."""
    with phase("ipam"):
        return delegate(conf["ipam"]["type"], env, conf, command)


def _as_cni_error(e: BaseException) -> CniError:
    if isinstance(e, CniError):
        return e
    if isinstance(e, StateDirError):
        return CniError(Code.IO_FAILURE, e.strerror, "the state directory must exist and be writable")
    if isinstance(e, (netns.NetnsNotFound, netns.NotAPodNetns)):
        return CniError(Code.INVALID_ENV, f"CNI_NETNS {e}")
    if isinstance(e, NodeSetupError):
        return CniError(Code.NODE_SETUP, str(e))
    from vnetdp.datapath.loader import CompileError
    if isinstance(e, CompileError):
        return CniError(Code.NODE_SETUP, f"datapath programs cannot be loaded: {e}",
                        "check kernel headers and bcc (vnetdp install compiles them)")
    return CniError(Code.ENDPOINT_FAILED, f"endpoint setup failed and was rolled back: {e}")


def _allocate(env: Env, conf: config.NetConf, node: Node) -> tuple[ipaddress.IPv4Interface, str]:
    """The IPv4 address (and gateway) the IPAM plugin gives this attachment,
    released again if it is unusable."""
    ipam = Result.parse(call_ipam(env, conf.raw) or {})
    ip4 = next((ip for ip in ipam.ips if ipaddress.ip_interface(ip["address"]).version == 4), None)
    problem = None if ip4 else f"IPAM plugin {conf.ipam['type']} returned no IPv4 address"
    if ip4:
        iface = ipaddress.IPv4Interface(ip4["address"])
        problem = in_use(node, iface.ip)
        if problem:
            problem = f"IPAM plugin {conf.ipam['type']} returned {iface.ip}, {problem}"
    if problem:
        call_ipam(env, conf.raw, "DEL")
        raise CniError(Code.DELEGATE_FAILED, problem)
    return iface, ip4.get("gateway", "")


def in_use(node: Node, address: ipaddress.IPv4Address) -> str | None:
    """Who already has ``address`` on this node (the node itself, or a live
    endpoint): an IPAM plugin that hands it out again is wrong, and the
    address must not be taken from its holder."""
    with rtnl.Rtnl() as rt:
        if address in {a.ip for _, a in rtnl.ipv4_interfaces(rt)}:
            return "an address of this node"
        if os.path.isdir(node.bpffs.maps_dir):
            with node.maps() as m:
                held = m.endpoint(address)
            if held is not None and rtnl.link_exists(rt, held.ifindex):
                return f"which the endpoint on ifindex {held.ifindex} holds"
    return None


def _result(env: Env, conf: config.NetConf, record: PodRecord) -> dict:
    prev = conf.prev_result or Result()
    first = len(prev.interfaces)
    gateway = str(endpoint.POD_GATEWAY)
    result = Result(
        interfaces=prev.interfaces + [{"name": naming.host_ifname(env.container_id, env.ifname),
                                       "mac": record.host_mac},
                                      {"name": env.ifname, "mac": record.pod_mac, "sandbox": env.netns}],
        ips=prev.ips + [{"address": f"{record.address}/32", "gateway": gateway, "interface": first + 1}],
        routes=prev.routes + [{"dst": "0.0.0.0/0", "gw": gateway}],
        dns=conf.raw.get("dns") or prev.dns)
    return result.to_json(conf.version)


def _plumb(env: Env, conf: config.NetConf, node: Node, records: PodRecords, record: PodRecord) -> PodRecord:
    """The endpoint for a saved record; the record with its MACs (the same
    ones again when the record has them: a repair does not change them)."""
    macs = (record.host_mac, record.pod_mac) if record.pod_mac else None
    info = endpoint.add(node, env.container_id, env.netns, env.ifname,
                        ipaddress.IPv4Address(record.address), conf.mtu, macs, conf.bandwidth, phase)
    done = dataclasses.replace(record, host_mac=info.host_mac, pod_mac=info.pod_mac)
    records.save(done)
    log.info("ADD %s/%s: %s on %s", env.container_id, env.ifname, record.address, info.host_ifname)
    return done


def _add_again(env: Env, conf: config.NetConf, node: Node, records: PodRecords, record: PodRecord) -> dict:
    """ADD for an attachment that exists: its result, untouched, when the
    endpoint is intact; repaired (same address and MACs) when it is not."""
    if record.netns != env.netns:
        raise CniError(Code.INVALID_ENV, f"{env.container_id}/{env.ifname} is attached in {record.netns}, "
                                         f"not {env.netns}", "DEL it before adding it elsewhere")
    with phase("endpoint"):
        problems = endpoint.check(node, env.container_id, env.ifname, env.netns,
                                  ipaddress.IPv4Address(record.address), conf.bandwidth)
    if problems or not record.pod_mac:
        log.warning("ADD %s/%s again: repairing (%s)", env.container_id, env.ifname,
                    "; ".join(problems) or "interrupted ADD")
        with phase("endpoint"):
            endpoint.delete(node, env.container_id, env.ifname, ipaddress.IPv4Address(record.address))
        record = _plumb(env, conf, node, records, record)
    return _result(env, conf, record)


def add(env: Env, conf: config.NetConf) -> dict:
    records = PodRecords(conf.state_dir)
    node = _node(conf, asked=True)  # before anything is allocated; node.json read once per ADD
    existing = records.get(env.container_id, env.ifname)
    if existing is not None:
        return _add_again(env, conf, node, records, existing)
    iface, gateway = _allocate(env, conf, node)
    record = PodRecord(env.container_id, env.ifname, env.netns, str(iface.ip), conf.ipam["type"],
                       str(iface.network), gateway,
                       env.args.get("K8S_POD_NAMESPACE", ""), env.args.get("K8S_POD_NAME", ""), conf.name)
    try:
        records.save(record)
        record = _plumb(env, conf, node, records, record)
    except BaseException as e:
        try:
            with phase("endpoint"):
                endpoint.delete(node, env.container_id, env.ifname, iface.ip)
            call_ipam(env, conf.raw, "DEL")
            records.remove(env.container_id, env.ifname)
        finally:
            raise _as_cni_error(e) from e
    return _result(env, conf, record)


def delete(env: Env, conf: config.NetConf) -> None:
    records = PodRecords(conf.state_dir)
    record = records.get(env.container_id, env.ifname)
    address = ipaddress.IPv4Address(record.address) if record else None
    with phase("endpoint"):
        endpoint.delete(_node(conf), env.container_id, env.ifname, address)
    call_ipam(env, conf.raw, "DEL")
    records.remove(env.container_id, env.ifname)
    log.info("DEL %s/%s: %s released", env.container_id, env.ifname, address or "no record,")


def check(env: Env, conf: config.NetConf) -> None:
    record = PodRecords(conf.state_dir).get(env.container_id, env.ifname)
    if record is None:
        raise CniError(Code.UNKNOWN_CONTAINER, f"no attachment {env.container_id}/{env.ifname} on this node")
    address = ipaddress.IPv4Address(record.address)
    if conf.prev_result:
        listed = {ipaddress.ip_interface(ip["address"]).ip for ip in conf.prev_result.ips}
        if address not in listed:
            raise CniError(Code.CHECK_FAILED, f"prevResult lists {sorted(map(str, listed))}, "
                                              f"the endpoint has {address}")
    call_ipam(env, conf.raw, "CHECK")
    with phase("endpoint"):
        problems = endpoint.check(_node(conf), env.container_id, env.ifname, env.netns, address, conf.bandwidth)
    if problems:
        raise CniError(Code.CHECK_FAILED, "; ".join(problems))


def gc(env: Env, conf: config.NetConf) -> None:
    valid = valid_attachments(conf.raw)
    node = _node(conf)
    records = PodRecords(conf.state_dir)
    for record in records.all():
        # GC of one network never touches another's pods (records without a name: any).
        mine = not record.network or record.network == conf.name
        if mine and (record.container_id, record.ifname) not in valid:
            with phase("endpoint"):
                endpoint.delete(node, record.container_id, record.ifname,
                                ipaddress.IPv4Address(record.address))
            records.remove(record.container_id, record.ifname)
            log.info("GC %s/%s: %s released", record.container_id, record.ifname, record.address)
    keep = {naming.host_ifname(r.container_id, r.ifname) for r in records.all()}
    with phase("endpoint"):
        endpoint.remove_strays(node, keep)
    call_ipam(env, conf.raw, "GC")


def status(env: Env, conf: config.NetConf) -> None:
    node = _node(conf)
    try:  # programs can be attached only to a NIC that is there, with an address
        with IPRoute() as ipr:
            nic = node.nic(ipr)
            if not links.ipv4_interfaces(ipr, nic.index):
                raise NodeSetupError(f"NIC {nic.name} has no IPv4 address")
    except NodeSetupError as e:
        raise CniError(Code.NOT_AVAILABLE, f"pods cannot be attached: {e}", "check the node setting 'master'")
    if not node.programs.is_loaded():
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
    if os.environ.get(invoke.DEPTH_VAR):
        raise CniError(Code.INVALID_CONFIG, "vnetdp was called as a delegate of vnetdp: its ipam.type leads "
                                            "back to the network plugin", "set ipam.type to vnetdp-ipam")
    netconf = config.parse(conf)
    for note in netconf.notes:
        log.info("config: %s", note)
    if env.command in ("ADD", "CHECK"):
        try:  # before anything is allocated: a pod's netns, not the node's, not a FIFO
            os.close(netns.open_pod_ns(env.netns))
        except (netns.NetnsNotFound, netns.NotAPodNetns) as e:
            raise _as_cni_error(e) from e
    try:
        with _locks(env, netconf.state_dir):
            return COMMANDS[env.command](env, netconf)
    except BaseException as e:
        raise _as_cni_error(e) from e


@contextlib.contextmanager
def _locks(env: Env, state_dir: str) -> Iterator[None]:
    """GC alone (an ADD between its listing and its removal would lose its
    veth); calls for one attachment one at a time (concurrent ADDs for one
    container and ifname would each tear down the other's veth). Waits are
    bounded: a call that cannot get its turn is told to try again (code 11)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(flocked(os.path.join(state_dir, defaults.GC_LOCK), exclusive=env.command == "GC",
                                       timeout=LOCK_WAIT_S))
            if env.container_id and env.ifname:
                name = f"{naming.attachment_hash(env.container_id, env.ifname)[:24]}.lock"
                held.enter_context(flocked(os.path.join(state_dir, LOCKS_DIR, name), timeout=LOCK_WAIT_S))
        except LockTimeout as e:
            raise CniError(Code.TRY_AGAIN_LATER, f"another call for this node or attachment is running: {e}")
        except OSError as e:
            raise StateDirError(e.errno, f"cannot lock in the state directory {state_dir}: {e}") from e
        yield
