"""Day two on the session's lab: restarts, upgrades and reconciling, under traffic.

- every vnetdp process of VM 2 SIGKILLed and restarted while pods ping at 200/s
  and a TCP stream runs across VMs, with ADDs before, during and after: no
  packet lost, the stream unbroken;
- ``vnetdp upgrade`` to a build with other flags, then ``--rollback``, under the
  same traffic plus a flow through SNAT: no packet lost, the counters never go
  back, the program ids change on the NIC and the pod's veth (and the rollback
  brings the very same programs back);
- ``vnetdp reconcile`` finds a damaged pod (map entry gone, a program detached,
  a stray veth), ``--fix`` repairs it, a second look is clean, the pod talks;
- ``vnetdp install`` and ``vnetdp agent`` mount a bpffs where none is. Always in a
  private mount namespace (``unshare --mount`` around ``ip netns exec``, which
  mounts a fresh /sys whose /sys/fs/bpf is an unmounted directory): the mount
  vanishes with it and the host's /sys/fs/bpf is never touched.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute

from lab_pods import address_of
from vnetdp import defaults, links, naming, netns
from vnetdp.datapath import attach
from vnetdp.datapath.bpffs import CURRENT, PREVIOUS
from vnetdp.lab import plan as P
from vnetdp.lab import probe
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import in_ns, run

RATE_INTERVAL = "0.005"   # 200 pings a second
IPERF_PORT = 5202         # beside probe's 5201: a test may still hold that one
UPGRADE_FLAG = "-DVND_UPGRADE_TEST=1"  # changes the build id; the programs ignore it


# --- helpers ----------------------------------------------------------------------------------

def vnetdp(lab, vm, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`vnetdp ARGS` inside VM ``vm``'s namespace, as on a node."""
    node = ["--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)]
    return in_ns(vm.ns, [sys.executable, "-m", "vnetdp.cli", *args, *node], check=False, timeout=timeout)


def as_json(proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")


@dataclass
class Ping:
    proc: subprocess.Popen
    what: str

    def result(self, timeout: float) -> tuple[int, int]:
        """(transmitted, received)"""
        out, err = self.proc.communicate(timeout=timeout)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, f"{self.what}: {out} {err}"
        return int(m.group(1)), int(m.group(2))


def start_ping(src_ns: str, dst: str, count: int, what: str) -> Ping:
    return Ping(subprocess.Popen(["ip", "netns", "exec", src_ns, "ping", "-n", "-q", "-i", RATE_INTERVAL,
                                  "-c", str(count), dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True), what)


@contextlib.contextmanager
def tcp_stream(src_ns: str, dst_ns: str, dst: str, seconds: int) -> Iterator[subprocess.Popen]:
    """An iperf3 stream from src_ns to a one-shot server in dst_ns, running
    while the block runs; the client process is yielded (its -J output is
    the verdict)."""
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-B", dst,
                               "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if in_ns(dst_ns, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], check=False).stdout.strip():
                break
            time.sleep(0.05)
        client = subprocess.Popen(["ip", "netns", "exec", src_ns, "iperf3", "-c", dst, "-p", str(IPERF_PORT),
                                   "-t", str(seconds), "-J", "--connect-timeout", "2000"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield client
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=seconds + 30)
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def assert_unbroken(client: subprocess.Popen, seconds: int) -> None:
    out, err = client.communicate(timeout=seconds + 30)
    result = probe.iperf_json(out)
    assert client.returncode == 0 and "error" not in result, (result.get("error"), err)
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert len(intervals) >= seconds - 1 and all(b > 0 for b in intervals), intervals


class CounterWatch(threading.Thread):
    """Samples a VM's datapath counters (per reason) ten times a second."""

    def __init__(self, lab, vm) -> None:
        super().__init__(daemon=True)
        self.lab, self.vm = lab, vm
        self.samples: list[collections.Counter] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(counters(self.lab, self.vm))
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """Every FWD_* counter that ever went down between two samples."""
        self.done.set()
        self.join(10)
        down = []
        for a, b in zip(self.samples, self.samples[1:]):
            down += [f"{r}: {a[r]} -> {b[r]}" for r in a if r.startswith("FWD_") and b[r] < a[r]]
        return down


def prog_ids(lab, vm, pod_ns: str) -> dict[str, int | None]:
    """The program ids attached to the VM's NIC and to a pod's host veth."""
    node = lab.node(vm)
    veth = naming.host_ifname(pod_ns, "eth0")
    with netns.enter(vm.ns), IPRoute() as ipr:
        nic, host = links.get_link(ipr, "eth0"), links.get_link(ipr, veth)
        found = {"eth0 ingress": attach.attached(nic.index, "ingress", node.bpffs.link_pin("eth0", "ingress"), ipr),
                 f"{veth} ingress": attach.attached(host.index, "ingress", node.bpffs.link_pin(veth, "ingress"), ipr),
                 f"{veth} egress": attach.attached(host.index, "egress", node.bpffs.link_pin(veth, "egress"), ipr)}
    return {k: a.prog_id if a else None for k, a in found.items()}


def vnetdp_processes(vm) -> list[int]:
    """vnetdp's processes in the VM's network namespace: the agent, its
    workers, CNI calls in flight (the lab's cloud emulation, vnetdp.lab.*,
    is not vnetdp's)."""
    target = os.stat(netns.path_of(vm.ns))
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and b"vnetdp" in cmdline \
                and b"vnetdp.lab" not in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def kill_all(pids: list[int]) -> None:
    """SIGKILL each (by PID: found by namespace and command line), and wait until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not any(_alive(p) for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"still running after SIGKILL: {[p for p in pids if _alive(p)]}")


# --- 1: restarts ------------------------------------------------------------------------------

def test_killing_every_vnetdp_process_of_a_vm_loses_no_packet(lab, pods):
    vm1, vm2 = lab.plan.all_vms
    src, dst_ns = lab.plan.pod_ns(vm1, 1), lab.plan.pod_ns(vm2, 1)
    dst = str(lab.pod_address(vm2, 1))
    target = str(lab.pod_address(vm1, 1))
    made: list[tuple[str, object]] = []
    with tcp_stream(src, dst_ns, dst, 8) as stream, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        ping = start_ping(src, dst, 2000, "pod to pod across VMs")
        time.sleep(1)
        # ADDs in flight while everything of vnetdp on VM 2 dies: agent, workers, entry points
        in_flight = [(ns, pool.submit(pods.call, "ADD", ns)) for ns in (pods.netns(), pods.netns())]
        time.sleep(0.05)
        killed = vnetdp_processes(vm2)
        assert killed, "no vnetdp process found in VM 2"
        kill_all(killed)
        for ns, future in in_flight:
            call = future.result(timeout=120)
            if not call.ok:  # killed mid-call: the runtime calls ADD again
                call = pods.call("ADD", ns)
            assert call.ok, (call.output, call.stderr)
            made.append((ns, call))
        # no agent: the entry point runs the calls itself
        made += [pods.add() for _ in range(2)]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(defaults.agent_socket(lab.plan.state_dir(vm2)))  # the dead agent's
        lab._start_agent(vm2)  # as the lab starts (and records) it
        made += [pods.add() for _ in range(2)]
        sent, received = ping.result(timeout=60)
        assert_unbroken(stream, 8)
    assert (sent, received) == (2000, 2000), f"lost {sent - received} of {sent} pings"
    for ns, call in made:
        assert pods.intact(ns, address_of(call)), ns
        assert probe.ping(ns, target).ok, ns
    assert vnetdp_processes(vm2), "the agent did not come back"


# --- 2: upgrade and rollback ------------------------------------------------------------------

def test_upgrade_and_rollback_under_traffic_lose_nothing(lab):
    vm1, vm2 = lab.plan.all_vms
    src, pod = lab.plan.pod_ns(vm1, 1), lab.plan.pod_ns(vm2, 1)
    dst = str(lab.pod_address(vm2, 1))
    veth = naming.host_ifname(pod, "eth0")
    bpffs = lab.node(vm2).bpffs
    first = bpffs.marker(CURRENT)
    before = prog_ids(lab, vm2, pod)
    assert all(before.values()), before
    watch = CounterWatch(lab, vm2)
    start = counters(lab, vm2)
    try:
        with tcp_stream(src, pod, dst, 15) as stream:
            pings = [start_ping(src, dst, 3000, "pod to pod across VMs"),
                     start_ping(pod, str(P.INET_IP), 3000, "pod to the internet through SNAT")]
            watch.start()
            time.sleep(1)
            up = vnetdp(lab, vm2, "upgrade", "--cflags", UPGRADE_FLAG, "--json", timeout=180)
            assert up.returncode == 0, (up.stdout, up.stderr)
            middle = prog_ids(lab, vm2, pod)
            time.sleep(1)  # traffic on the new build
            back = vnetdp(lab, vm2, "upgrade", "--rollback", "--json")
            assert back.returncode == 0, (back.stdout, back.stderr)
            results = [(p.what, p.result(timeout=60)) for p in pings]
            assert_unbroken(stream, 15)
        down = watch.stop()
        after = prog_ids(lab, vm2, pod)
        moved = counters(lab, vm2) - start
        up, back = as_json(up), as_json(back)
        for what, (sent, received) in results:
            assert (sent, received) == (3000, 3000), f"{what}: lost {sent - received} of {sent}"
        assert down == [], down
        assert moved["FWD_SNAT"] >= 3000 and moved["FWD_SNAT_REPLY"] >= 3000 and moved["FWD_TO_POD"] >= 3000
        # the upgrade replaced every program in place, the rollback put the same ones back
        assert up["from"] == first and up["to"] != first and up["layout"]["compatible"] and up["ok"]
        assert all(middle[k] != before[k] for k in before), (before, middle)
        swapped = {(s["device"], s["hook"]): (s["old_id"], s["new_id"]) for s in up["replaced"]}
        assert swapped[("eth0", "ingress")] == (before["eth0 ingress"], middle["eth0 ingress"])
        assert swapped[(veth, "ingress")] == (before[f"{veth} ingress"], middle[f"{veth} ingress"])
        assert swapped[(veth, "egress")] == (before[f"{veth} egress"], middle[f"{veth} egress"])
        assert (back["from"], back["to"], back["previous"]) == (up["to"], first, up["to"])
        assert after == before, (before, after)
        assert (bpffs.marker(CURRENT), bpffs.marker(PREVIOUS)) == (first, up["to"])
        # an ADD after the rollback attaches the rolled-back build, not the newest
        assert lab.node(vm2).programs.build == first
    finally:
        watch.done.set()
        # back to the lab's build, and only it pinned, as the other tests expect of the session's lab
        if bpffs.marker(CURRENT) != first and bpffs.marker(PREVIOUS) == first:
            vnetdp(lab, vm2, "upgrade", "--rollback")
        if bpffs.marker(CURRENT) == first:
            bpffs.set_marker(PREVIOUS, None)
            lab.node(vm2).programs.prune()


def test_upgrade_refuses_without_a_previous_build_to_roll_back_to(lab):
    vm = lab.plan.vm(1)
    proc = vnetdp(lab, vm, "upgrade", "--rollback", "--json")
    if lab.node(vm).bpffs.marker(PREVIOUS) is None:
        assert proc.returncode == 1 and "no previous build" in as_json(proc)["refused"], proc.stdout


# --- 3: reconcile -----------------------------------------------------------------------------

STRAY = "vnd0a1b2c3d4e5"


def test_reconcile_finds_and_repairs_a_damaged_pod(lab, pods):
    vm = pods.vm
    ns, call = pods.add()
    address, veth = address_of(call), naming.host_ifname(ns, "eth0")
    node = lab.node(vm)
    first = as_json(vnetdp(lab, vm, "reconcile", "--json"))
    baseline = {(d["kind"], d["subject"]) for d in first["differences"]}
    try:
        with netns.enter(vm.ns), IPRoute() as ipr:
            with node.maps() as m:
                assert m.delete_endpoint(address)
            host = links.get_link(ipr, veth)
            attach.detach(host.index, "egress", node.bpffs.link_pin(veth, "egress"), ipr)
        run(["ip", "-n", vm.ns, "link", "add", STRAY, "type", "veth", "peer", "name", "vndtestpeer"])
        found = vnetdp(lab, vm, "reconcile", "--json")
        report = as_json(found)
        assert found.returncode == 1 and not report["clean"]
        damage = {("map-entry-missing", address), ("program-missing", veth), ("veth-stray", STRAY)}
        listed = {(d["kind"], d["subject"]) for d in report["differences"]}
        assert listed - baseline == damage, report
        human = vnetdp(lab, vm, "reconcile")
        assert human.returncode == 1 and all(kind in human.stdout for kind, _ in damage), human.stdout

        fixed = vnetdp(lab, vm, "reconcile", "--fix", "--json")
        report = as_json(fixed)
        statuses = {(d["kind"], d["subject"]): d["status"] for d in report["differences"]}
        assert all(statuses[d] == "fixed" for d in damage), report
        assert fixed.returncode == 0 and report["clean"] and report["remaining"] == [], report

        again = vnetdp(lab, vm, "reconcile", "--json")
        assert again.returncode == 0 and as_json(again)["differences"] == [], again.stdout
        assert pods.intact(ns, address)
        assert probe.ping(ns, str(lab.pod_address(lab.plan.vm(1), 1))).ok
        assert probe.ping(lab.plan.pod_ns(lab.plan.vm(1), 1), address).ok
    finally:
        run(["ip", "-n", vm.ns, "link", "del", STRAY], check=False)


# --- 4: a bpffs where none is mounted --------------------------------------------------------

def _root_mount_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def in_private_mounts(vm, script: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``script`` (sh) in VM ``vm``'s network namespace and a private mount
    namespace with a fresh /sys (its /sys/fs/bpf an unmounted directory); it
    refuses to run (exit 99) in the host's mount namespace."""
    guard = f'test "$(readlink /proc/self/ns/mnt)" != "{_root_mount_ns()}" || exit 99\n'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "ip", "netns", "exec", vm.ns,
                           "sh", "-c", guard + script], capture_output=True, text=True, timeout=timeout)


def test_install_mounts_a_bpffs_where_none_is_and_never_over_files(lab):
    vm = lab.plan.vm(2)
    host_has = os.path.exists("/sys/fs/bpf/vnetdp")
    with tempfile.TemporaryDirectory(prefix="vnd-mount-") as tmp:
        os.makedirs(f"{tmp}/full")
        with open(f"{tmp}/full/somebody's", "w") as f:
            f.write("x")
        install = (f"{sys.executable} -m vnetdp.cli install --cni-bin-dir {tmp}/bin --cni-conf-dir {tmp}/conf "
                   f"--state-dir {tmp}/state --ipam-url http://127.0.0.1:{P.NMAGENT_PORT}/doc")
        proc = in_private_mounts(vm, f"""
echo before=$(stat -f -c %T /sys/fs/bpf)
{install} --bpffs-dir /sys/fs/bpf/vnetdp || exit 1
echo after=$(stat -f -c %T /sys/fs/bpf)
echo current=$(readlink /sys/fs/bpf/vnetdp/progs/current)
ls /sys/fs/bpf/vnetdp/maps
{install} --bpffs-dir {tmp}/full --no-compile 2>&1 && exit 2
exit 0
""")
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        out = proc.stdout
        assert "before=sysfs" in out and "after=bpf_fs" in out, out
        assert "installed /sys/fs/bpf (a bpf filesystem for /sys/fs/bpf/vnetdp: none was mounted)" in out
        assert re.search(r"current=[0-9a-f]{12}\n", out) and "endpoints" in out, out
        assert "holds files" in out, out
        assert os.listdir(f"{tmp}/full") == ["somebody's"]
    assert os.path.exists("/sys/fs/bpf/vnetdp") == host_has  # the host's bpffs untouched


def test_the_agent_mounts_a_bpffs_where_none_is(lab):
    vm = lab.plan.vm(2)
    with tempfile.TemporaryDirectory(prefix="vnd-agent-mount-") as tmp:
        proc = in_private_mounts(vm, f"""
{sys.executable} -m vnetdp.cli agent --state-dir {tmp}/state --bpffs-dir /sys/fs/bpf/vnetdp 2>{tmp}/err &
agent=$!
for i in $(seq 100); do [ -S {tmp}/state/agent.sock ] && break; sleep 0.1; done
echo after=$(stat -f -c %T /sys/fs/bpf)
kill $agent; wait $agent
cat {tmp}/err
""", timeout=60)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "after=bpf_fs" in proc.stdout, proc.stdout
    assert "mounted a bpf filesystem at /sys/fs/bpf for /sys/fs/bpf/vnetdp" in proc.stdout, proc.stdout

