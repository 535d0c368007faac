"""Bringing a lab up and down, and adding pods to its VMs.

``Lab.up`` records what it starts (server PIDs, bpffs mounts) in
``<lab dir>/state.json`` before starting it, so ``Lab.down`` — in this process
or a later one — removes every trace even after a failed ``up``: processes
(by PID, only ours), bpffs mounts, every namespace with the lab's prefix.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from vnetdp import defaults, install, netns
from vnetdp.datapath import bpffs
from vnetdp.datapath.node import Node, NodeSettings
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.files import atomic_write
from vnetdp.lab import cni, fabric, fabric_routes, nmagent
from vnetdp.lab import plan as P
from vnetdp.lab.shell import ip_batch, run
from vnetdp.network.records import PodRecords

SERVER_MODULE = "vnetdp.lab.nmagent"
CLI_MODULE = "vnetdp.cli"
SWEEP_EVERY_S = 2  # the agent's SNAT sweeps, as an operator's service would run them


class LabError(Exception):
    pass


def lab_namespaces(prefix: str) -> list[str]:
    try:
        names = os.listdir(netns.NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def running_plan(lab_id: str) -> P.Plan:
    """The plan of a lab that is up, its number of VMs read from its namespaces."""
    plan = P.Plan(lab_id)
    names = set(lab_namespaces(plan.prefix))
    vms = sum(1 for k in range(1, 10) if plan.ns(f"vm{k}") in names)
    if not vms:
        raise LabError(f"lab {lab_id or 'default'} is not up (vnetdp-lab up)")
    return P.Plan(lab_id, vms=vms)


class Lab:
    def __init__(self, plan: P.Plan, vnetdp: bool = True, **node_settings) -> None:
        """``vnetdp``: the VMs run vnetdp (installed, its agent up, the host
        agent's documents served); False for the bench's baselines, whose
        VMs must carry nothing of it."""
        self.plan = plan
        self.vnetdp = vnetdp
        # Every VM's node settings (config names, e.g. nicAttach="xdp"), set at install;
        # the peered VNet is on the VNet: not translated; pods' public IPs are learnt
        # from the VM's metadata document.
        self.node_settings = {"master": "eth0", "vnetCidrs": [str(n) for n in P.VNET_SPACE],
                              "metadataUrl": cni.metadata_url(), **node_settings}
        self.state_file = os.path.join(plan.dir, "state.json")

    # --- state ---------------------------------------------------------
    def _state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"pids": [], "mounts": []}

    def _write_state(self, state: dict) -> None:
        atomic_write(self.state_file, json.dumps(state))

    def _record(self, key: str, value) -> None:
        state = self._state()
        state[key].append(value)
        self._write_state(state)

    def is_up(self) -> bool:
        return os.path.exists(self.state_file) or bool(lab_namespaces(self.plan.prefix))

    # --- up ------------------------------------------------------------
    def up(self) -> None:
        if self.is_up():
            raise LabError(f"lab {self.plan.lab_id or 'default'} is already up "
                           f"(vnetdp-lab down{' --id ' + self.plan.lab_id if self.plan.lab_id else ''})")
        os.makedirs(self.plan.dir, exist_ok=True)
        self._write_state({"pids": [], "mounts": []})
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        p = self.plan
        for ns in [p.fabric, p.inet, *(p.host_ns(h) for h in P.HOSTS), *(vm.ns for vm in p.all_vms)]:
            run(["ip", "netns", "add", ns])
        for vm in p.all_vms:
            fabric.link_veth(vm.ns, "eth0", vm.mac, p.fabric, vm.name, P.GATEWAY_MAC)
        for h in P.HOSTS:
            fabric.link_veth(p.host_ns(h), "eth0", h.mac, p.fabric, h.role, P.GATEWAY_MAC)
        fabric.link_veth(p.inet, "eth0", "02:00:c6:12:00:01", p.fabric, "inet", P.GATEWAY_MAC)
        fabric.build(p)
        for h in P.HOSTS:
            self._host(p.host_ns(h), h.interface, h.gateway)
        fabric_routes.start_appliance(p)
        self._host(p.inet, ipaddress.IPv4Interface(f"{P.INET_IP}/24"), P.INET_FABRIC_IP)
        for vm in p.all_vms:
            self._host(vm.ns, vm.primary, P.GATEWAY)
            # A node forwards, as Kubernetes nodes do: host-stack paths (hostPorts) need it.
            run(["ip", "netns", "exec", vm.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            os.makedirs(p.state_dir(vm), exist_ok=True)
            self._record("mounts", p.bpffs_dir(vm))
            bpffs.mount(p.bpffs_dir(vm))
            if not self.vnetdp:
                continue
            self._start_nmagent(vm)
            os.makedirs(self.log_dir(vm), exist_ok=True)
            install.install(self.cni_bin_dir(vm), self.cni_conf_dir(vm), p.state_dir(vm),
                            self.node_bpffs_dir(vm), cni.nmagent_url(), node_settings=self.node_settings,
                            log_dir=self.log_dir(vm))
            self._start_agent(vm)

    def _host(self, ns: str, addr, gateway: ipaddress.IPv4Address) -> None:
        iface = addr if isinstance(addr, ipaddress.IPv4Interface) \
            else ipaddress.IPv4Interface(f"{addr}/{P.VNET.prefixlen}")
        ip_batch(ns, ["link set lo up", "link set eth0 up", f"addr add {iface} dev eth0",
                      f"route add default via {gateway} dev eth0"])

    def _start_nmagent(self, vm: P.Vm) -> None:
        """The VM's interface and metadata documents, served in its namespace."""
        directory = os.path.join(self.plan.dir, vm.name)
        nmagent.write_documents(directory, vm.mac, P.VNET, vm.primary, vm.secondaries(self.plan.pool))
        proc = self.start(vm.ns, SERVER_MODULE, [directory, str(P.NMAGENT_PORT)])

        def listening() -> bool:
            with netns.enter(vm.ns):
                try:
                    socket.create_connection(("127.0.0.1", P.NMAGENT_PORT), timeout=1).close()
                    return True
                except OSError:
                    return False

        _wait_for(listening, proc, f"document server in {vm.ns}")

    def _start_agent(self, vm: P.Vm) -> None:
        """The node agent (CNI fast path, SNAT sweeps), up before the first pod
        and configuring the node as it starts."""
        proc = self.start(vm.ns, CLI_MODULE, ["agent", "--state-dir", self.plan.state_dir(vm),
                                            "--bpffs-dir", self.node_bpffs_dir(vm),
                                            "--sweep-every", str(SWEEP_EVERY_S)])
        _wait_for(lambda: os.path.exists(defaults.agent_socket(self.plan.state_dir(vm))), proc,
                  f"agent in {vm.ns}")

    def start(self, ns: str, module: str, args: list[str]) -> subprocess.Popen:
        """A lab process (``python -m module args``) in namespace ``ns``, recorded for ``down``."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self._record("pids", [proc.pid, module])
        return proc

    def stop(self, module: str) -> None:
        """Stop the lab's processes of ``module`` (by PID, only ours) and forget them."""
        state = self._state()
        for pid, name in state["pids"]:
            if name == module:
                _stop_own_process(pid, module)
        state["pids"] = [entry for entry in state["pids"] if entry[1] != module]
        self._write_state(state)

    # --- per VM --------------------------------------------------------
    def node_bpffs_dir(self, vm: P.Vm) -> str:
        return f"{self.plan.bpffs_dir(vm)}/vnetdp"

    def cni_bin_dir(self, vm: P.Vm) -> str:
        return os.path.join(self.plan.dir, vm.name, "cni", "bin")

    def cni_conf_dir(self, vm: P.Vm) -> str:
        return os.path.join(self.plan.dir, vm.name, "cni", "net.d")

    def log_dir(self, vm: P.Vm) -> str:
        """Where the VM's plugins log (vnetdp.log, vnetdp-ipam.log), not the host's /var/log."""
        return os.path.join(self.plan.dir, vm.name, "log")

    def cni(self, vm: P.Vm, command: str, conf: dict | None = None, **kw) -> cni.CniCall:
        """Run the VM's installed vnetdp plugin (see ``vnetdp.lab.cni.invoke``)."""
        return cni.invoke(vm.ns, self.cni_bin_dir(vm), command, conf or cni.network_config(), **kw)

    def node(self, vm: P.Vm, **overrides) -> Node:
        """The VM's node datapath with its node settings (``overrides``:
        NodeSettings attributes that differ, for tests that go below CNI)."""
        options = {**NodeSettingsFile(self.plan.state_dir(vm)).load(), **overrides}
        if options.get("nic_attach") == "xdp":
            fabric.finish_checksums(self.plan, vm)
        return Node(NodeSettings(bpffs_dir=self.node_bpffs_dir(vm), state_dir=self.plan.state_dir(vm),
                                 **options))

    def add_pod(self, vm: P.Vm, j: int, conf: dict | None = None) -> ipaddress.IPv4Address:
        """A pod namespace attached through the VM's installed CNI plugin, as a
        runtime does it; returns the address IPAM gave it."""
        ns = self.plan.pod_ns(vm, j)
        run(["ip", "netns", "add", ns])
        call = self.cni(vm, "ADD", conf, container_id=ns, pod_netns=netns.path_of(ns))
        if not call.ok:
            raise LabError(f"CNI ADD for {ns} failed: {call.output} {call.stderr[-300:]}")
        return ipaddress.IPv4Interface(call.output["ips"][0]["address"]).ip

    def pod_address(self, vm: P.Vm, j: int) -> ipaddress.IPv4Address:
        """The address of pod j on vm, as its attachment record holds it."""
        ns = self.plan.pod_ns(vm, j)
        record = PodRecords(self.plan.state_dir(vm)).get(ns, "eth0")
        if record is None:
            raise LabError(f"pod {ns} has no attachment")
        return ipaddress.IPv4Address(record.address)

    # --- down ----------------------------------------------------------
    def down(self) -> list[str]:
        """Remove everything of this lab; returns what it removed."""
        removed: list[str] = []
        state = self._state()
        for pid, module in state["pids"]:
            if _stop_own_process(pid, module):
                removed.append(f"process {pid}")
        for ns in lab_namespaces(self.plan.prefix):
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
        for mount in state["mounts"]:
            bpffs.unmount(mount)
        if os.path.isdir(self.plan.dir):
            shutil.rmtree(self.plan.dir, ignore_errors=True)
            removed.append(self.plan.dir)
        try:
            os.rmdir(P.LAB_ROOT)
        except OSError:
            pass
        return removed


def _wait_for(ready, proc: subprocess.Popen, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise LabError(f"{what} did not start")
        time.sleep(0.05)


def _stop_own_process(pid: int, marker: str) -> bool:
    """SIGTERM ``pid`` only if it is still the process we started, then reap it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if marker.encode() not in f.read():
                return False
    except FileNotFoundError:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return True
