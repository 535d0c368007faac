"""The commands of the ``vnetdp-ipam`` plugin, and the one place where IPAM's
errors become CNI codes. ``vnetdp`` runs ``handle`` in-process when its
``ipam.type`` is ``vnetdp-ipam`` (a registration in ``vnetdp.plugins``): the
same code as the binary, without a second process."""
from __future__ import annotations

import ipaddress
import os
import time

from vnetdp import defaults
from vnetdp.cni.spec import CniError, Code, Env, Result, valid_attachments, version_result
from vnetdp.ipam import errors
from vnetdp.ipam.sources import Pool, check_source, load_pools
from vnetdp.ipam.store import Allocation, State, Store

REFRESH_S = 30.0  # ADD re-reads the source at most this often (and whenever the pool is empty)
CODES = {errors.PoolExhausted: Code.POOL_EXHAUSTED, errors.StateCorrupt: Code.STATE_CORRUPT,
         errors.StateIoError: Code.IO_FAILURE, errors.SourceUnavailable: Code.SOURCE_UNAVAILABLE,
         errors.BadIpamConfig: Code.INVALID_CONFIG}


def as_cni_error(e: errors.IpamError) -> CniError:
    code = next((CODES[k] for k in type(e).__mro__ if k in CODES), Code.INTERNAL)
    return CniError(code, e.msg, e.hint)


def _ipam(conf: dict) -> dict:
    """The config's ipam section, checked whole on every call (whether or not
    this call reads the source), with the node's default URL filled in."""
    ipam = conf.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise errors.BadIpamConfig("ipam must be an object")
    ipam = dict(ipam)
    if "url" not in ipam and os.environ.get("VNETDP_IPAM_URL"):
        ipam["url"] = os.environ["VNETDP_IPAM_URL"]
    _refresh_seconds(ipam)
    check_source(ipam)
    return ipam


def store_of(conf: dict) -> Store:
    return Store(_ipam(conf).get("stateDir") or defaults.state_dir(conf))


def _nic_mac(conf: dict) -> str | None:
    """The MAC of ``master``, which picks the document's interface."""
    master = conf.get("master")
    if not master:
        return None
    from vnetdp import rtnl
    with rtnl.Rtnl() as rt:
        try:
            return rtnl.get_link(rt, master).mac
        except rtnl.LinkNotFound:
            raise errors.BadIpamConfig(f"master interface {master!r} does not exist")


def _refresh_seconds(ipam: dict) -> float:
    value = ipam.get("refreshSeconds", REFRESH_S)
    if type(value) not in (int, float) or value < 0:
        raise errors.BadIpamConfig(f"ipam.refreshSeconds must be a number of seconds, not {value!r}")
    return float(value)


def _stale(state: State, ipam: dict) -> bool:
    """The pool must be re-read: never read, too old, or nothing free."""
    return not state.pools or state.free() == 0 or time.time() - state.refreshed > _refresh_seconds(ipam)


def fresh_pools(conf: dict) -> list[Pool]:
    """The source's pools less the node's own addresses (never a pod's,
    whatever a document says). Fetched outside the store's lock: a slow
    source must not hold up other pods' calls."""
    from vnetdp import rtnl
    with rtnl.Rtnl() as rt:
        own = {a.ip for _, a in rtnl.ipv4_interfaces(rt)}
    return [Pool(p.subnet, p.gateway, tuple(a for a in p.addresses if a not in own))
            for p in load_pools(_ipam(conf), _nic_mac(conf))]


def _result(alloc: Allocation, version: str) -> dict:
    net = ipaddress.IPv4Network(alloc.subnet) if alloc.subnet else None
    address = f"{alloc.address}/{net.prefixlen if net else 32}"
    ip = {"address": address, **({"gateway": alloc.gateway} if alloc.gateway else {})}
    routes = [{"dst": "0.0.0.0/0", "gw": alloc.gateway}] if alloc.gateway else []
    return Result(ips=[ip], routes=routes).to_json(version)


def _gc(store: Store, valid: set[tuple[str, str]], network: str) -> None:
    try:
        with store.transaction() as state:
            state.keep_only(valid, network)
    except errors.StateCorrupt:
        store.rebuild(a for a in store.leases() if (a.container_id, a.ifname) in valid or not a.of_network(network))


def _command(env: Env, conf: dict, store: Store) -> dict | None:
    _ipam(conf)
    if env.command == "GC":
        _gc(store, valid_attachments(conf), str(conf.get("name", "")))
        return None
    pools = None
    if env.command in ("ADD", "STATUS"):
        with store.transaction() as state:
            held = state.find(env.container_id, env.ifname) if env.command == "ADD" else None
            stale = not held and _stale(state, _ipam(conf))
        pools = fresh_pools(conf) if stale else None
    with store.transaction() as state:
        if pools is not None:
            state.refresh(pools, time.time())
        if env.command == "ADD":
            alloc = state.allocate(env.container_id, env.ifname, time.time(), str(conf.get("name", "")))
            return _result(alloc, conf["cniVersion"])
        if env.command == "DEL":
            state.release(env.container_id, env.ifname)
            return None
        if env.command == "CHECK":
            if not state.find(env.container_id, env.ifname):
                raise CniError(Code.UNKNOWN_CONTAINER,
                               f"no address allocated to {env.container_id}/{env.ifname}")
            return None
        if env.command == "STATUS":
            if state.free() == 0:
                raise CniError(Code.NOT_AVAILABLE, "no free address in the pool",
                               "add secondary IP addresses to the VM's NIC")
            return None
    raise CniError(Code.INVALID_ENV, f"unknown command {env.command}")


def handle(env: Env, conf: dict) -> dict | None:
    if env.command == "VERSION":
        return version_result(conf)
    try:
        return _command(env, conf, store_of(conf))
    except errors.IpamError as e:
        raise as_cni_error(e) from e
