"""A real Docker (Debian's docker.io, 20.10) on two lab VMs with vnetdp's
network and IPAM driver (``vnetdp docker-plugin``): networks, containers that
reach each other, the peer VM, a CNI pod and the internet through vnetdp's
datapath; --ip; the exhausted pool as ``docker run`` prints it; docker rm and
network rm releasing everything; the plugin killed and restarted under a
container's ping; XDP on the NIC.

Each VM gets a dockerd of its own, as ../shared/REAL-CLIENTS.md says: inside
the VM's network namespace (``ip netns exec``: a mount namespace of its own),
a wrapper shell mounts a private /run (the lab's /run/vnetdp-lab moved back
into it: the node's state and pins), binds a temp directory over /etc/docker
and mounts the host's cgroup hierarchies, then ``exec``s dockerd with data
root, exec root, pid file and socket in a temp directory and
``--bridge=none --iptables=false --ip6tables=false --ip-forward=false
--ip-masq=false --userland-proxy=false`` (and a cgroup parent of its own, so
that what runc leaves there can be removed). The plugin runs in dockerd's
network and mount namespaces (``nsenter``), serving
/run/docker/plugins/vnetdp.sock in that private /run: the only place that
dockerd looks for it, and where it sees the containers' network namespaces.

Teardown, also after a failure: containers and networks removed through
docker, the plugin and dockerd stopped by PID (their command line checked),
then whatever still runs in dockerd's mount namespace (containerd's shims)
and the processes they run, cgroups under the parent, mounts left under the
temp directory, the temp directory.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cri.containerd_run import CGROUP_ROOT, host_cgroup_mounts   # tests/e2e/cri: the host's cgroup mounts
from vnetdp import naming, netns
from vnetdp.datapath.reasons import describe
from vnetdp.ipam.store import DOCKER, Store
from vnetdp.lab import cni, observe
from vnetdp.lab import plan as P
from vnetdp.lab.shell import run
from vnetdp.network.records import PodRecords

DOCKERD = shutil.which("dockerd", path="/usr/sbin:/usr/bin") or "/usr/sbin/dockerd"  # Debian's docker.io
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "cat")
IMAGE = "vndbox:latest"
NETWORK = "vndnet"
PLUGIN_SOCKET = "/run/docker/plugins/vnetdp.sock"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def _docker_cli() -> str:
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker"


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _wait_gone(pids: list[int], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)


@dataclass
class DockerNode:
    """dockerd and vnetdp's plugin on one lab VM, everything of theirs under ``tmp``."""

    lab: object
    vm: P.Vm
    tmp: Path
    tag: str
    dockerd: subprocess.Popen | None = None
    plugin: subprocess.Popen | None = None
    mnt_ns: str | None = None
    left: list[str] = field(default_factory=list)   # what teardown had to force

    @property
    def socket(self) -> Path:
        return self.tmp / "docker.sock"

    @property
    def cgroup_parent(self) -> str:
        return f"vnd-docker-{self.tag}"

    @property
    def pid(self) -> int:
        return self.dockerd.pid

    def log_tail(self, n: int = 3000) -> str:
        out = []
        for name in ("dockerd.log", "plugin.log"):
            try:
                out.append(f"--- {name} ---\n" + (self.tmp / name).read_text(errors="replace")[-n:])
            except OSError:
                pass
        return "\n".join(out)

    # --- dockerd ----------------------------------------------------------------
    def wrapper(self) -> str:
        q = shlex.quote
        keep = q(str(self.tmp / "keep"))
        lines = ["set -eu",
                 f"mkdir -p {keep}", f"mount --rbind {P.LAB_ROOT} {keep}",
                 "mount -t tmpfs -o mode=755 tmpfs /run",
                 f"mkdir -p {P.LAB_ROOT}", f"mount --move {keep} {P.LAB_ROOT}",
                 f"mount --bind {q(str(self.tmp / 'etc-docker'))} /etc/docker",
                 *host_cgroup_mounts(),
                 "mkdir -p /run/docker/plugins",
                 f"export PATH={SAFE_PATH}",
                 " ".join(["exec", DOCKERD, "--data-root", q(str(self.tmp / "docker")),
                           "--exec-root", q(str(self.tmp / "exec")), "--pidfile", q(str(self.tmp / "docker.pid")),
                           "-H", q(f"unix://{self.socket}"), "--bridge=none", "--iptables=false",
                           "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
                           "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", self.cgroup_parent])]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        (self.tmp / "etc-docker").mkdir(parents=True, exist_ok=True)
        (self.tmp / "wrapper.sh").write_text(self.wrapper())
        with open(self.tmp / "dockerd.log", "ab") as log:
            self.dockerd = subprocess.Popen(["ip", "netns", "exec", self.vm.ns, "bash", str(self.tmp / "wrapper.sh")],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0):
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not serve {self.socket}\n{self.log_tail()}")
            time.sleep(0.1)
        self.mnt_ns = _mnt_ns(self.pid)

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([_docker_cli(), "-H", f"unix://{self.socket}", *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}\n{self.log_tail()}")
        return proc

    # --- the plugin ------------------------------------------------------------
    def plugin_socket(self) -> str:
        """The plugin's socket in dockerd's private /run, seen through its root."""
        return f"/proc/{self.pid}/root{PLUGIN_SOCKET}"

    def plugin_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(self.plugin_socket())
                return True
            except OSError:
                return False

    def start_plugin(self) -> None:
        with open(self.tmp / "plugin.log", "ab") as log:
            self.plugin = subprocess.Popen(
                ["nsenter", "-t", str(self.pid), "-m", "-n", sys.executable, "-m", "vnetdp.cli", "docker-plugin",
                 "--socket", PLUGIN_SOCKET, "--state-dir", self.lab.plan.state_dir(self.vm),
                 "--bpffs-dir", self.lab.node_bpffs_dir(self.vm), "--ipam-url", cni.nmagent_url()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.plugin_answers():
            if self.plugin.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the plugin did not serve {PLUGIN_SOCKET}\n{self.log_tail()}")
            time.sleep(0.05)

    def signal_plugin(self, sig: int) -> None:
        if self.plugin is not None and self.plugin.poll() is None and b"docker-plugin" in _cmdline(self.plugin.pid):
            os.kill(self.plugin.pid, sig)
        if self.plugin is not None:
            self.plugin.wait(timeout=20)

    # --- containers -------------------------------------------------------------
    def run_container(self, name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        # unconfined: a host with AppArmor would want its profile loaded, which ip netns exec's /sys cannot
        return self.docker("run", "-d", "--name", name, "--network", NETWORK, "--security-opt", "apparmor=unconfined",
                           *extra, IMAGE, "sleep", "600", check=check)

    def address(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                           name).stdout.strip()

    def endpoint_id(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
                           name).stdout.strip()

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def exec(self, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.docker("exec", name, *argv, check=False, timeout=timeout)

    def ping(self, name: str, address, count: int = 3) -> bool:
        proc = self.exec(name, "ping", "-c", str(count), "-W", "2", str(address))
        return proc.returncode == 0 and f"{count} packets received" in proc.stdout

    def remove_all(self) -> list[str]:
        """Every container and the test network gone through docker; what failed."""
        problems = []
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            proc = self.docker("rm", "-f", *ids, check=False)
            if proc.returncode:
                problems.append(proc.stderr.strip())
        networks = self.docker("network", "ls", "-q", "--filter", f"name={NETWORK}", check=False).stdout.split()
        if networks:
            proc = self.docker("network", "rm", *networks, check=False)
            if proc.returncode:
                problems.append(proc.stderr.strip())
        return problems

    # --- teardown ---------------------------------------------------------------
    def stop(self) -> None:
        self.signal_plugin(signal.SIGTERM)
        if self.dockerd is not None and self.dockerd.poll() is None:
            if os.path.basename(_cmdline(self.pid).split(b"\0")[0]) == b"dockerd":
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.dockerd.wait(timeout=10)
                self.left.append("dockerd (killed)")
        # containerd and its shims live on in dockerd's mount namespace; the
        # containers' processes are the shims' children
        if self.mnt_ns:
            ours = [p for p in _pids() if _mnt_ns(p) == self.mnt_ns]
            children = [p for p in _pids() if _ppid(p) in ours]
            for pid in children + ours:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.left.append(f"process {pid} {_cmdline(pid)[:60]!r}")
                except ProcessLookupError:
                    pass
            _wait_gone(children + ours)
        for top, dirs, _ in os.walk(CGROUP_ROOT, topdown=False):
            for d in dirs:
                path = os.path.join(top, d)
                if self.cgroup_parent in path.split(os.sep):
                    try:
                        os.rmdir(path)
                    except OSError:
                        self.left.append(f"cgroup {path}")
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for point in sorted((m for m in mounts if m.startswith(str(self.tmp) + "/")), key=len, reverse=True):
            run(["umount", "-l", point], check=False)
            self.left.append(f"mount {point}")
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def etc_docker():
    """/etc/docker must exist as a mount point for the private bind; made
    here (and removed again) when the host has none."""
    made = not os.path.isdir("/etc/docker")
    if made:
        os.makedirs("/etc/docker")
    yield
    if made:
        try:
            os.rmdir("/etc/docker")
        except OSError:
            pass


def busybox_image(tmp: Path) -> Path:
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    tar = tmp / "busybox.tar"
    run(["tar", "-C", str(root), "-cf", str(tar), "."])
    return tar


@pytest.fixture(scope="module")
def dockers(lab, etc_docker):
    """dockerd and the plugin on VM 1 and VM 2, the busybox image imported,
    a vnetdp network on each (VM 1 with --subnet, VM 2 without)."""
    nodes = []
    try:
        for vm in lab.plan.all_vms[:2]:
            tmp = Path(tempfile.mkdtemp(prefix="vnd-dk-"))
            node = DockerNode(lab, vm, tmp, secrets.token_hex(3))
            nodes.append(node)
            node.start()
            node.start_plugin()
            node.docker("import", str(busybox_image(tmp)), IMAGE)
        vm1, vm2 = nodes
        vm1.docker("network", "create", "--driver", "vnetdp", "--ipam-driver", "vnetdp",
                   "--subnet", str(P.VNET), NETWORK)
        # Without --subnet Docker 20.10 itself refuses the NIC's subnet (it overlaps the VM's route)
        # and asks again without end: the driver ends that loop with the way out.
        unasked = vm2.docker("network", "create", "--driver", "vnetdp", "--ipam-driver", "vnetdp", NETWORK,
                             check=False, timeout=60)
        assert unasked.returncode != 0 and f"--subnet {P.VNET}" in unasked.stderr, unasked.stderr
        vm2.docker("network", "create", "--driver", "vnetdp", "--ipam-driver", "vnetdp",
                   "--subnet", str(P.VNET), NETWORK)
        yield nodes
    finally:
        problems = []
        for node in nodes:
            logs = ""
            try:
                if node.dockerd is not None and node.dockerd.poll() is None:
                    problems += node.remove_all()
                logs = node.log_tail()
            finally:
                try:
                    node.stop()
                except Exception as e:   # the other VM's node is still stopped
                    problems.append(f"{node.vm.name}: stopping failed: {e}")
            if node.left:
                problems.append(f"{node.vm.name}: teardown had to force {node.left}\n{logs}")
        if problems:
            pytest.fail("; ".join(problems))


@pytest.fixture(autouse=True)
def no_container_outlives_its_test(dockers):
    yield
    for node in dockers:
        ids = node.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            node.docker("rm", "-f", *ids, check=False)


# --- what the node holds ----------------------------------------------------------------
def docker_allocations(lab, vm) -> dict[str, str]:
    """address -> endpoint ID of Docker's addresses in the VM's IPAM store."""
    with Store(lab.plan.state_dir(vm)).transaction() as state:
        return {a.address: a.container_id for a in state.allocations if a.owner == DOCKER}


def docker_records(lab, vm) -> list:
    return [r for r in PodRecords(lab.plan.state_dir(vm)).all() if r.network.startswith("docker:")]


def links_of(vm) -> set[str]:
    out = run(["ip", "-n", vm.ns, "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def ifindex(vm, name: str) -> int:
    return int(run(["ip", "-n", vm.ns, "-o", "link", "show", name]).stdout.split(":")[0])


def veth_counters(lab, vm, index: int) -> collections.Counter:
    """Packets per reason counted on one host veth (both directions)."""
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        total: collections.Counter = collections.Counter()
        for metric in m.metrics():
            if metric.ifindex == index:
                total[describe(metric.reason).name] += metric.packets
        return total


def map_has(lab, vm, address: str) -> bool:
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        return m.endpoint(address) is not None


# --- tests --------------------------------------------------------------------------------
def test_networks_take_the_nics_subnet(dockers):
    for node in dockers:
        ipam = json.loads(node.docker("network", "inspect", "-f", "{{json .IPAM}}", NETWORK).stdout)
        assert ipam["Driver"] == "vnetdp"
        assert [c["Subnet"] for c in ipam["Config"]] == [str(P.VNET)]


def test_containers_reach_each_other_the_peer_a_pod_and_the_internet(lab, dockers):
    vm1, vm2 = dockers
    for node, name in ((vm1, "c1"), (vm1, "c2"), (vm2, "c3")):
        node.run_container(name)
    a1, a2, a3 = vm1.address("c1"), vm1.address("c2"), vm2.address("c3")
    pool1 = {str(a) for a in vm1.vm.secondaries(lab.plan.pool)}
    assert {a1, a2} <= pool1 and a3 in {str(a) for a in vm2.vm.secondaries(lab.plan.pool)}
    assert docker_allocations(lab, vm1.vm) == {a1: vm1.endpoint_id("c1"), a2: vm1.endpoint_id("c2")}
    # the container's side is a CNI pod's: the address as /32, the on-link gateway and its neighbour
    addr = vm1.exec("c1", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{a1}/32" in addr, addr
    routes = vm1.exec("c1", "ip", "route").stdout
    assert "default via 169.254.1.1 dev eth0" in routes and "169.254.1.1 dev eth0" in routes, routes
    host = naming.host_ifname(vm1.endpoint_id("c1"), "eth0")
    host_mac = run(["ip", "-n", vm1.vm.ns, "-o", "link", "show", host]).stdout.split("link/ether ")[1].split()[0]
    deadline = time.monotonic() + 10
    while True:
        neigh = run(["nsenter", "-t", str(vm1.container_pid("c1")), "-n", "ip", "neigh", "show",
                     "169.254.1.1"]).stdout
        if "PERMANENT" in neigh or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert host_mac in neigh and "PERMANENT" in neigh, neigh
    assert not {n for n in links_of(vm1.vm) if n.startswith("vnp")}   # Docker moved the container ends
    before = veth_counters(lab, vm1.vm, ifindex(vm1.vm, host))
    total_before = observe.counters(lab, vm1.vm)
    for target in (a2, a3, P.PEER_IP, lab.pod_address(vm1.vm, 1), P.INET_IP):
        assert vm1.ping("c1", target), f"c1 -> {target}\n{vm1.log_tail()}"
    assert vm2.ping("c3", a1), "c3 -> c1"
    moved = veth_counters(lab, vm1.vm, ifindex(vm1.vm, host)) - before
    # everything c1 sent went through vnetdp's program on its veth: switched on the node,
    # out of the NIC to the VNet, translated to the internet
    assert moved["FWD_LOCAL"] >= 6 and moved["FWD_VNET"] >= 6 and moved["FWD_SNAT"] >= 3, moved
    assert (observe.counters(lab, vm1.vm) - total_before)["FWD_SNAT_REPLY"] >= 3
    assert observe.bridges(lab) == []


def test_ip_gets_its_address_and_one_in_use_is_refused(lab, dockers):
    vm1 = dockers[0]
    free = sorted(set(map(str, vm1.vm.secondaries(lab.plan.pool))) -
                  {a.address for a in Store(lab.plan.state_dir(vm1.vm)).leases()},
                  key=ipaddress.IPv4Address)
    vm1.run_container("fixed", "--ip", free[-1])
    assert vm1.address("fixed") == free[-1]
    assert vm1.ping("fixed", P.PEER_IP)
    pod = str(lab.pod_address(vm1.vm, 1))
    proc = vm1.run_container("taken", "--ip", pod, check=False)
    assert proc.returncode != 0 and f"{pod} is in use by CNI pod" in proc.stderr, proc.stderr
    proc = vm1.run_container("notmine", "--ip", str(lab.plan.vm(2).secondaries(lab.plan.pool)[0]), check=False)
    assert proc.returncode != 0 and "not a secondary address of the VM's NIC" in proc.stderr, proc.stderr


def test_an_exhausted_pool_is_what_docker_run_prints(lab, dockers):
    vm1 = dockers[0]
    pool = {str(a) for a in vm1.vm.secondaries(lab.plan.pool)}
    with Store(lab.plan.state_dir(vm1.vm)).transaction() as state:
        taken = {a.address for a in state.allocations} & pool
    for i in range(len(pool) - len(taken)):
        vm1.run_container(f"fill{i}")
    held = docker_allocations(lab, vm1.vm)
    proc = vm1.run_container("onetoomany", check=False)
    assert proc.returncode != 0
    message = proc.stderr
    assert "IpamDriver.RequestAddress" in message, message
    assert f"the VM's NIC has {len(pool)} secondary address(es) there and all are in use" in message, message
    assert "add secondary IP addresses to the VM's NIC" in message, message
    assert docker_allocations(lab, vm1.vm) == held          # the failed run left nothing allocated
    for i in range(len(pool) - len(taken)):
        vm1.docker("rm", "-f", f"fill{i}")
    vm1.docker("rm", "-f", "onetoomany")
    assert docker_allocations(lab, vm1.vm) == {}


def test_rm_and_network_rm_release_everything(lab, dockers):
    vm1 = dockers[0]
    vm1.docker("network", "create", "--driver", "vnetdp", "--ipam-driver", "vnetdp", "--subnet", str(P.VNET),
               f"{NETWORK}-2")
    vm1.docker("run", "-d", "--name", "r1", "--network", f"{NETWORK}-2", "--security-opt", "apparmor=unconfined",
               IMAGE, "sleep", "600")
    endpoint_id, address = vm1.endpoint_id("r1"), vm1.address("r1")
    host = naming.host_ifname(endpoint_id, "eth0")
    assert host in links_of(vm1.vm) and map_has(lab, vm1.vm, address)
    assert docker_allocations(lab, vm1.vm) == {address: endpoint_id}
    vm1.docker("rm", "-f", "r1")
    assert docker_allocations(lab, vm1.vm) == {} and docker_records(lab, vm1.vm) == []
    assert host not in links_of(vm1.vm) and not map_has(lab, vm1.vm, address)
    network_id = vm1.docker("network", "inspect", "-f", "{{.Id}}", f"{NETWORK}-2").stdout.strip()
    vm1.docker("network", "rm", f"{NETWORK}-2")
    assert not os.path.exists(os.path.join(lab.plan.state_dir(vm1.vm), "docker", "networks", f"{network_id}.json"))
    assert docker_allocations(lab, vm1.vm) == {}


def test_the_plugin_killed_and_restarted_loses_no_reply_and_carries_on(lab, dockers):
    vm1 = dockers[0]
    vm1.run_container("pinger")
    count = 12
    ping = subprocess.Popen([_docker_cli(), "-H", f"unix://{vm1.socket}", "exec", "pinger", "ping", "-c", str(count),
                             "-W", "2", str(P.PEER_IP)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        vm1.signal_plugin(signal.SIGKILL)
        assert os.path.exists(vm1.plugin_socket()) and not vm1.plugin_answers()   # left by the killed plugin
        time.sleep(2)
        vm1.start_plugin()
        vm1.run_container("after")                       # the new plugin serves
        assert vm1.ping("after", P.PEER_IP)
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert f"{count} packets transmitted, {count} packets received" in out, out
    # the endpoint made before the kill is cleaned up by the new plugin
    address, endpoint_id = vm1.address("pinger"), vm1.endpoint_id("pinger")
    vm1.docker("rm", "-f", "pinger", "after")
    assert docker_allocations(lab, vm1.vm) == {}
    assert naming.host_ifname(endpoint_id, "eth0") not in links_of(vm1.vm) and not map_has(lab, vm1.vm, address)


def test_xdp_on_the_nic_delivers_into_a_container(lab, dockers, node_set):
    """The container end gets the XDP program veth needs to receive
    XDP-redirected frames once Docker has moved it into the container."""
    vm1 = dockers[0]
    node_set(vm1.vm, nicAttach="xdp")
    lab.node(vm1.vm)   # the fabric finishes checksums toward an XDP NIC
    vm1.run_container("x1")
    address = vm1.address("x1")
    before = observe.counters(lab, vm1.vm)
    assert vm1.ping("x1", P.PEER_IP)
    deadline = time.monotonic() + 10
    pod = lab.plan.pod_ns(lab.plan.vm(2), 1)
    while not run(["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "1", address], check=False).returncode == 0:
        assert time.monotonic() < deadline, f"a pod on VM 2 cannot reach {address}\n{vm1.log_tail()}"
    assert (observe.counters(lab, vm1.vm) - before)["FWD_TO_POD"] >= 2
