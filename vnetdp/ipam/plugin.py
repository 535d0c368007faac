"""The commands of the ``vnetdp-ipam`` plugin. ``vnetdp`` calls ``handle``
in-process when its ``ipam.type`` is ``vnetdp-ipam``: the same code as the
binary, without a second process."""
from __future__ import annotations

import ipaddress
import os
import time

from vnetdp.cni.attachments import Attachments
from vnetdp.cni.config import state_dir_of
from vnetdp.cni.spec import CniError, Code, Env, Result, valid_attachments, version_result
from vnetdp.ipam.sources import load_pools
from vnetdp.ipam.store import Allocation, State, Store

TYPE = "vnetdp-ipam"
REFRESH_S = 30.0  # ADD re-reads the source at most this often (and whenever the pool is empty)


def _ipam(conf: dict) -> dict:
    ipam = dict(conf.get("ipam") or {})
    if "url" not in ipam and os.environ.get("VNETDP_IPAM_URL"):
        ipam["url"] = os.environ["VNETDP_IPAM_URL"]
    return ipam


def store_of(conf: dict) -> Store:
    return Store(_ipam(conf).get("stateDir") or state_dir_of(conf))


def _nic_mac(conf: dict) -> str | None:
    """The MAC of ``master``, which picks the document's interface."""
    master = conf.get("master")
    if not master:
        return None
    from pyroute2 import IPRoute

    from vnetdp import links
    with IPRoute() as ipr:
        try:
            return links.get_link(ipr, master).mac
        except links.LinkNotFound:
            raise CniError(Code.INVALID_CONFIG, f"master interface {master!r} does not exist")


def _refresh(state: State, conf: dict, force: bool) -> None:
    ipam = _ipam(conf)
    refresh_s = float(ipam.get("refreshSeconds", REFRESH_S))
    if force or not state.pools or time.time() - state.refreshed > refresh_s:
        state.refresh(load_pools(ipam, _nic_mac(conf)), time.time())


def _result(alloc: Allocation, version: str) -> dict:
    net = ipaddress.IPv4Network(alloc.subnet) if alloc.subnet else None
    address = f"{alloc.address}/{net.prefixlen if net else 32}"
    ip = {"address": address, **({"gateway": alloc.gateway} if alloc.gateway else {})}
    routes = [{"dst": "0.0.0.0/0", "gw": alloc.gateway}] if alloc.gateway else []
    return Result(ips=[ip], routes=routes).to_json(version)


def rebuild(state_dir: str, valid: set[tuple[str, str]] | None = None) -> State:
    """A new state from what vnetdp's attachment records say is in use."""
    allocations = [Allocation(r.container_id, r.ifname, r.address, r.subnet, r.gateway, time.time())
                   for r in Attachments(state_dir).all()
                   if r.ipam_type == TYPE and (valid is None or (r.container_id, r.ifname) in valid)]
    return Store(state_dir).rebuild(allocations)


def handle(env: Env, conf: dict) -> dict | None:
    version = conf["cniVersion"]
    if env.command == "VERSION":
        return version_result(conf)
    store = store_of(conf)
    if env.command == "GC":
        valid = valid_attachments(conf)
        try:
            with store.transaction() as state:
                state.keep_only(valid)
        except CniError as e:
            if e.code != Code.STATE_CORRUPT:
                raise
            rebuild(store.dir, valid)
        return None
    with store.transaction() as state:
        if env.command == "ADD":
            if not state.find(env.container_id, env.ifname):
                _refresh(state, conf, force=state.free() == 0)
            return _result(state.allocate(env.container_id, env.ifname, time.time()), version)
        if env.command == "DEL":
            state.release(env.container_id, env.ifname)
            return None
        if env.command == "CHECK":
            if not state.find(env.container_id, env.ifname):
                raise CniError(Code.UNKNOWN_CONTAINER,
                               f"no address allocated to {env.container_id}/{env.ifname}")
            return None
        if env.command == "STATUS":
            _refresh(state, conf, force=state.free() == 0)
            if state.free() == 0:
                raise CniError(Code.NOT_AVAILABLE, "no free address in the pool",
                               "add secondary IP addresses to the VM's NIC")
            return None
    raise CniError(Code.INVALID_ENV, f"unknown command {env.command}")
