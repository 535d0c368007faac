"""A real runtime: podman (CNI backend) runs a container on a vnetdp network
inside a lab VM's namespace; the container reaches a pod on the other VM and
the peer VM, and ``podman rm`` releases its address.

podman gets a private /run (as ../shared/REAL-CLIENTS.md describes) with the
lab's directory moved back into it, a private /var/lib, cgroup v1 mounts of its own, and every
directory of its own under a temp dir; it is told to have the plugin run the
call itself (VNETDP_NO_AGENT), because the container's netns lives in
podman's private /run, which the node agent cannot see."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from vnetdp.lab import cni
from vnetdp.lab import plan as P

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "cat")

pytestmark = pytest.mark.skipif(not (shutil.which("podman") and os.path.exists(BUSYBOX)),
                                reason="podman and busybox-static are installed by make setup")

SCRIPT = r"""
set -eu
T={tmp}
mkdir -p $T/keep-lab
mount --rbind {lab_root} $T/keep-lab
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib   # podman's blob cache in /var/lib/containers stays private too
mkdir -p {lab_root}
mount --move $T/keep-lab {lab_root}
mount -t tmpfs tmpfs /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
export CONTAINERS_CONF=$T/containers.conf VNETDP_NO_AGENT=1
pm() {{ podman --root $T/pstore --runroot $T/prun --storage-driver overlay --tmpdir $T/ptmp \
        --cgroup-manager cgroupfs "$@"; }}
pm import -q $T/busybox.tar localhost/vndbox:latest >/dev/null
pm run -d --name vndc --network vnetdp-net --cap-add NET_RAW localhost/vndbox:latest sleep 120 >/dev/null
echo "=== addr"; pm exec vndc ip -4 -o addr show eth0
echo "=== ipam-running"; cat {ipam}
echo "=== ping-pod"; pm exec vndc ping -c 1 -W 2 {pod} >/dev/null && echo ok || echo failed
echo "=== ping-peer"; pm exec vndc ping -c 1 -W 2 {peer} >/dev/null && echo ok || echo failed
pm rm -f -t 0 vndc >/dev/null
echo "=== ipam-after-rm"; cat {ipam}
"""


def sections(out: str) -> dict[str, str]:
    parts = out.split("=== ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1].strip() for p in parts}


@pytest.fixture
def short_tmp():
    """podman refuses a run root path longer than 50 characters."""
    path = tempfile.mkdtemp(prefix="vnd-pm-")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_podman_container_on_a_vnetdp_network(lab, short_tmp):
    tmp_path = short_tmp
    vm1, vm2 = lab.plan.all_vms
    rootfs = tmp_path / "rootfs" / "bin"
    rootfs.mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", rootfs / applet)
    subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tmp_path / "busybox.tar"), "."], check=True)
    net_d = tmp_path / "net.d"
    net_d.mkdir()
    (net_d / "vnetdp-net.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "vnetdp-net",
         "plugins": [{k: v for k, v in cni.network_config().items() if k not in ("cniVersion", "name")}]}))
    (tmp_path / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{tmp_path}/events.log"\ntmp_dir = "{tmp_path}/ptmp"\n'
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{lab.cni_bin_dir(vm1)}", "/usr/lib/cni"]\n'
        f'network_config_dir = "{net_d}"\n')
    ipam = os.path.join(lab.plan.state_dir(vm1), "ipam.json")
    script = SCRIPT.format(tmp=tmp_path, lab_root=P.LAB_ROOT, ipam=ipam,
                           pod=lab.pod_address(vm2, 1), peer=P.PEER_IP)
    proc = subprocess.run(["ip", "netns", "exec", vm1.ns, "bash", "-c", script], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = sections(proc.stdout)
    address = out["addr"].split("inet ")[1].split("/")[0]
    running = {a["address"] for a in json.loads(out["ipam-running"])["allocations"]}
    after = {a["address"] for a in json.loads(out["ipam-after-rm"])["allocations"]}
    assert address in running and address not in after
    assert address in {str(a) for a in vm1.secondaries(lab.plan.pool)}
    assert (out["ping-pod"], out["ping-peer"]) == ("ok", "ok")
