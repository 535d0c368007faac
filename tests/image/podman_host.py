"""podman for the image tests, kept apart from the machine it runs on.

Every podman command runs inside one private mount namespace held by a helper
process (``unshare --propagation slave`` then ``sleep``): podman's overlay
mounts and the containers' mounts live and die there. It sees /run as an empty
tmpfs (runc's and podman's run directories) except for /run/netns and the lab's
directory, bound back in so that containers can join a lab VM's namespace and
mount its directories, and /etc/containers through a private copy. Slave
propagation: mounts made on the machine later (a new pod's netns) reach the
helper's namespace, none made in it reach the machine. Storage, run root and
temporary files are under ``store`` (as build-image.sh left them) and ``work``; ``close`` removes the
containers, ends the namespace and leaves only files, which the caller removes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "kubernetes" / "build-image.sh"
IMAGE = "localhost/vnetdp-node:latest"

_SETUP = r"""
set -e
w=$1; shift
mkdir -p "$w/hostrun" "$w/etc-containers"
mount --rbind /run "$w/hostrun"  # before anything is shared here: a copy, not a peer of /
mount -t tmpfs -o mode=0755 vnetdp-image-test-run /run
for d in "$@"; do
  [ -d "$w/hostrun/$d" ] || continue
  mkdir -p "/run/$d"
  mount --rbind "$w/hostrun/$d" "/run/$d"
done
cp -a /etc/containers/. "$w/etc-containers/" 2>/dev/null || true
mount --bind "$w/etc-containers" /etc/containers
# Bidirectional (rshared) container mounts need shared parents: new peer groups of this
# namespace only (still slaves of the machine's, which never receive from them).
mount --make-rshared /
echo ready
exec sleep infinity
"""

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{work}/events.log"
tmp_dir = "{store}/tmp"
"""


def build_image(store: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """deploy/kubernetes/build-image.sh into ``store``."""
    return subprocess.run(["bash", str(BUILD_SCRIPT), "--store", store], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class PodmanHost:
    def __init__(self, store: str, work: str, run_dirs: tuple[str, ...] = ("netns", "vnetdp-lab")) -> None:
        self.store, self.work = store, work
        # The store's database names its temporary directory (build-image.sh: <store>/tmp);
        # podman uses that one whatever --tmpdir says, so it is given the same.
        self.tmp = os.path.join(store, "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        self.conf = os.path.join(work, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(CONTAINERS_CONF.format(work=work, store=store))
        self.helper = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", _SETUP, "setup", work, *run_dirs],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        line = self.helper.stdout.readline()
        if line.strip() != "ready":
            self.helper.kill()
            raise RuntimeError(f"podman's namespace did not start: {line} {self.helper.stderr.read()}")
        self.containers: list[str] = []

    def podman(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["nsenter", "-t", str(self.helper.pid), "-m", "--",
                "podman", "--root", os.path.join(self.store, "root"),
                "--runroot", os.path.join(self.store, "runroot"), "--storage-driver", "overlay",
                "--tmpdir", self.tmp, "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]
        env = {**os.environ, "CONTAINERS_CONF": self.conf, "TMPDIR": self.tmp}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run(self, name: str, args: list[str], command: list[str], detach: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """``podman run`` of the image as ``name`` (removed by ``close``)."""
        self.containers.append(name)
        return self.podman("run", "--name", name, *(["-d"] if detach else []), *args, IMAGE, *command,
                           timeout=timeout, check=False)

    def logs(self, name: str) -> str:
        proc = self.podman("logs", name, check=False)
        return proc.stdout + proc.stderr

    def close(self) -> None:
        """Remove every container, then end the namespace (and with it every mount)."""
        try:
            for name in reversed(self.containers):
                self.podman("rm", "--force", "--time", "5", name, check=False, timeout=60)
        finally:
            if self.helper.poll() is None:
                os.killpg(self.helper.pid, signal.SIGKILL)
            self.helper.wait()


def remove_tree(path: str) -> None:
    """Remove a store or work directory (no mount is left in it: they lived in the helper's namespace)."""
    shutil.rmtree(path, ignore_errors=True)
