"""A real Docker (Debian's docker.io, 20.10) on a lab VM with vnetdp's network
and IPAM driver (``vnetdp docker-plugin``): used by ``vnetdp-lab docker-demo``
and tests/e2e/test_docker.py.

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
Containers run an image imported from the host's static busybox (sh, ping,
ip, sleep, cat).

``restart`` stops dockerd (SIGTERM as systemd does, or SIGKILL: a crash) and
starts it again with the same command line (``--live-restore`` switched when
asked) inside the same mount namespace, entered through the plugin, which
keeps it while dockerd is down: the private /run (the plugin's socket,
containerd's shim sockets, the sandboxes' namespaces), /etc/docker and the
cgroup mounts stay, as they do across a restart on a host.

Teardown (``teardown``), also after a failure: containers and networks
removed through docker, the plugin and dockerd stopped by PID (their command
line checked), then whatever still runs in dockerd's mount namespace
(containerd's shims) and the processes they run, cgroups under the parent,
mounts left under the temp directory, the temp directory.
"""
from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vnetdp.lab import cni, daemons
from vnetdp.lab import plan as P
from vnetdp.lab.daemons import CGROUP_ROOT, SAFE_PATH, host_cgroup_mounts
from vnetdp.lab.probe import ProbeResult, ping_result
from vnetdp.lab.shell import run
from vnetdp.lab.topology import Lab

DOCKERD = shutil.which("dockerd", path="/usr/sbin:/usr/bin") or "/usr/sbin/dockerd"  # Debian's docker.io
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "cat")
IMAGE = "vndbox:latest"
NETWORK = "vndnet"
PLUGIN_SOCKET = "/run/docker/plugins/vnetdp.sock"


class DockerFailed(RuntimeError):
    """A docker command that had to work did not (its stderr and the daemons' log tails)."""


def docker_cli() -> str:
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker"


def missing_tools() -> list[str]:
    """What this host lacks to run Docker in a lab VM (empty: nothing)."""
    wanted = {DOCKERD: "dockerd (apt: docker.io)", docker_cli(): "the docker client (apt: docker.io)",
              BUSYBOX: "a static busybox (apt: busybox-static)"}
    return [what for path, what in wanted.items() if not (os.path.isfile(path) and os.access(path, os.X_OK))]


@dataclass
class DockerNode:
    """dockerd and vnetdp's plugin on one lab VM, everything of theirs under ``tmp``."""

    lab: Lab
    vm: P.Vm
    tmp: Path
    tag: str
    dockerd: subprocess.Popen | None = None
    plugin: subprocess.Popen | None = None
    mnt_ns: str | None = None
    left: list[str] = field(default_factory=list)   # what teardown had to force
    live_restore: bool = False                      # dockerd --live-restore

    @classmethod
    def for_vm(cls, lab: Lab, vm: P.Vm) -> DockerNode:
        """A node for ``vm`` with a fresh temp directory, nothing started yet."""
        return cls(lab, vm, Path(tempfile.mkdtemp(prefix="vnd-dk-")), secrets.token_hex(3))

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

    def bring_up(self) -> None:
        """dockerd, then the plugin, then the busybox image imported."""
        self.start()
        self.start_plugin()
        self.docker("import", str(busybox_image(self.tmp)), IMAGE)

    # --- dockerd ----------------------------------------------------------------
    def dockerd_argv(self) -> list[str]:
        """dockerd's command line: data root, exec root, pid file and socket
        under ``tmp``, no bridge, iptables, forwarding or proxy of its own."""
        return [DOCKERD, "--data-root", str(self.tmp / "docker"), "--exec-root", str(self.tmp / "exec"),
                "--pidfile", str(self.tmp / "docker.pid"), "-H", f"unix://{self.socket}", "--bridge=none",
                "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                "--userland-proxy=false", "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--cgroup-parent", self.cgroup_parent, *(["--live-restore"] if self.live_restore else [])]

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
                 "exec " + shlex.join(self.dockerd_argv())]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        (self.tmp / "etc-docker").mkdir(parents=True, exist_ok=True)
        (self.tmp / "wrapper.sh").write_text(self.wrapper())
        self._launch(["ip", "netns", "exec", self.vm.ns, "bash", str(self.tmp / "wrapper.sh")])
        self.mnt_ns = daemons.mnt_ns(self.pid)

    def _launch(self, argv: list[str]) -> None:
        """dockerd run by ``argv`` (which execs it: its PID is dockerd's),
        waited for until it serves its socket."""
        with open(self.tmp / "dockerd.log", "ab") as log:
            self.dockerd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True)
        deadline = time.monotonic() + 90
        while not self._serving():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not serve {self.socket}\n{self.log_tail()}")
            time.sleep(0.1)

    def _serving(self) -> bool:
        """Whether dockerd answers on its socket (one restarting after a crash
        may take a while to: it first deals with the containers it left)."""
        try:
            return self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def restart(self, sig: int = signal.SIGTERM, live_restore: bool | None = None) -> None:
        """dockerd stopped by ``sig`` (SIGTERM: as systemd stops it, its
        containers stopped unless it runs with --live-restore; SIGKILL: a
        crash, its containers left running) and started again with the same
        command line (``--live-restore`` as ``live_restore`` says, when given)
        in the same mount namespace: entered through the plugin, which keeps
        it while dockerd is down."""
        if self.plugin is None or self.plugin.poll() is not None:
            raise RuntimeError("restarting dockerd needs the plugin running: it keeps dockerd's mount namespace")
        anchor = self.plugin.pid
        self.stop_dockerd(sig)
        if live_restore is not None:
            self.live_restore = live_restore
        self._launch(["nsenter", "-t", str(anchor), "-m", "-n", *self.dockerd_argv()])
        if daemons.mnt_ns(self.pid) != self.mnt_ns:
            raise RuntimeError(f"the restarted dockerd is not in the mount namespace {self.mnt_ns}")

    def stop_dockerd(self, sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
        """dockerd signalled by its PID (its command line checked) and waited
        for; killed when it outlasts ``wait_s`` (noted in ``left``)."""
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        if os.path.basename(daemons.cmdline(self.pid).split(b"\0")[0]) == b"dockerd":
            os.kill(self.pid, sig)
        try:
            self.dockerd.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.dockerd.wait(timeout=10)
            self.left.append("dockerd (killed)")

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([docker_cli(), "-H", f"unix://{self.socket}", *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise DockerFailed(f"docker {' '.join(args)}: {proc.stderr.strip()}\n{self.log_tail()}")
        return proc

    def create_network(self, name: str = NETWORK, subnet: bool = True, check: bool = True,
                       timeout: float = 120) -> subprocess.CompletedProcess:
        """A vnetdp network (driver and IPAM driver); ``subnet``: with ``--subnet``
        the lab's VNet, which Docker 20.10 needs (without it, it refuses the pool
        the driver offers: it overlaps the VM's route)."""
        return self.docker("network", "create", "--driver", "vnetdp", "--ipam-driver", "vnetdp",
                           *(["--subnet", str(P.VNET)] if subnet else []), name, check=check, timeout=timeout)

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
        if self.plugin is not None and self.plugin.poll() is None \
                and b"docker-plugin" in daemons.cmdline(self.plugin.pid):
            os.kill(self.plugin.pid, sig)
        if self.plugin is not None:
            self.plugin.wait(timeout=20)

    # --- containers -------------------------------------------------------------
    def run_container(self, name: str, *extra: str, check: bool = True,
                      network: str = NETWORK) -> subprocess.CompletedProcess:
        # unconfined: a host with AppArmor would want its profile loaded, which ip netns exec's /sys cannot
        return self.docker("run", "-d", "--name", name, "--network", network, "--security-opt", "apparmor=unconfined",
                           *extra, IMAGE, "sleep", "600", check=check)

    def address(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                           name).stdout.strip()

    def endpoint_id(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
                           name).stdout.strip()

    def network_id(self, name: str = NETWORK) -> str:
        return self.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def status(self, name: str) -> str:
        """Docker's state of the container: created, running, exited, ..."""
        return self.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()

    def exec(self, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.docker("exec", name, *argv, check=False, timeout=timeout)

    def ping_probe(self, name: str, address, count: int = 3, wait: int = 2,
                   interval: float | None = None) -> ProbeResult:
        """Container ``name`` pings ``address`` (busybox's ping): every reply
        back, and the average round trip in ms."""
        interval_args = ["-i", str(interval)] if interval is not None else []
        proc = self.exec(name, "ping", "-c", str(count), "-W", str(wait), *interval_args, str(address))
        return ping_result(proc, count)

    def ping(self, name: str, address, count: int = 3) -> bool:
        return self.ping_probe(name, address, count).ok

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
        self.stop_dockerd()
        # containerd and its shims live on in dockerd's mount namespace; the
        # containers' processes are the shims' children
        if self.mnt_ns:
            ours = [p for p in daemons.pids() if daemons.mnt_ns(p) == self.mnt_ns]
            children = [p for p in daemons.pids() if daemons.ppid(p) in ours]
            for pid in children + ours:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.left.append(f"process {pid} {daemons.cmdline(pid)[:60]!r}")
                except ProcessLookupError:
                    pass
            daemons.wait_gone(children + ours)
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


def busybox_image(tmp: Path) -> Path:
    """A tar of a root with the host's static busybox and its applets, for ``docker import``."""
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    tar = tmp / "busybox.tar"
    run(["tar", "-C", str(root), "-cf", str(tar), "."])
    return tar


@contextlib.contextmanager
def etc_docker_mountpoint() -> Iterator[None]:
    """/etc/docker must exist as a mount point for the private bind; made
    here (and removed again) when the host has none."""
    made = not os.path.isdir("/etc/docker")
    if made:
        os.makedirs("/etc/docker")
    try:
        yield
    finally:
        if made:
            try:
                os.rmdir("/etc/docker")
            except OSError:
                pass


def teardown(nodes: list[DockerNode]) -> list[str]:
    """Each node's containers and networks removed through docker, then the
    node stopped (the next one too when stopping one failed); what went wrong
    or had to be forced, empty when teardown was clean."""
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
    return problems
