"""A real Kubernetes runtime: containerd 1.6 (Debian's), driven through CRI
as a kubelet drives it, runs pod sandboxes on VM 1 of the session's lab with
the installed vnetdp conflist (vnetdp, then portmap).

- containerd runs inside the VM's network namespace with its own root,
  state, socket, config and private /run (cri/containerd_run.py); the pause
  image is built here (cri/pause.c, cri/pause_image.py) and imported with
  ``ctr``; the CRI client is this project's own (cri/cri_client.py over
  cri/cri_proto.py);
- ``netns_mounts_under_state_dir``: containerd bind-mounts each pod's netns
  under its state directory, in its private mount namespace, where the node
  agent cannot see it; vnetdp's entry point hands the agent the open netns as
  a descriptor, which is what this exercises;
- the sandbox's netns is reached through its pause process
  (``nsenter -t <pid> -n``: /proc/<pid>/ns/net is the same namespace from
  any mount namespace), the PID read from PodSandboxStatus's verbose info;
  the bind mount's path comes from the same info (the runtime spec).

Several CRI runtime handlers, one containerd: containerd 1.6 gives each its
own CNI conf dir (``cni_conf_dir``), so the refused conflist and the reference
bridge need no second daemon. containerd 1.6 takes a single CNI ``bin_dir``
(not a list), so the test makes one of links: vnetdp and vnetdp-ipam from the
VM's install, loopback, portmap, bridge and host-local from /usr/lib/cni.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="grpcio is a test extra (pip install -e '.[test]')")

from pyroute2 import IPRoute  # noqa: E402

from cri.containerd_run import Containerd  # noqa: E402
from cri.cri_client import CriClient, CriError, pod_sandbox_config  # noqa: E402
from cri import cri_proto, pause_image  # noqa: E402
from vnetdp import naming, netns  # noqa: E402
from vnetdp.ipam.store import Store  # noqa: E402
from vnetdp.lab import probe  # noqa: E402
from vnetdp.lab import plan as P  # noqa: E402
from vnetdp.lab.shell import run  # noqa: E402
from vnetdp.network.records import PodRecords  # noqa: E402

REFERENCE_PLUGINS = "/usr/lib/cni"
REFERENCE_BINARIES = ("loopback", "portmap", "bridge", "host-local")
NEEDED = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "cc", "nsenter")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in NEEDED)
    or not all(os.path.exists(f"{REFERENCE_PLUGINS}/{p}") for p in REFERENCE_BINARIES),
    reason="containerd (with runc), gcc/libc6-dev and containernetworking-plugins are installed by make setup")

REFUSED = "vnd-refused"     # runtime handler: a conflist whose vnetdp entry contradicts the node
NO_START = "vnd-nostart"    # runtime handler: the network comes up, the sandbox task cannot start
BRIDGE = "vnd-bridge"       # runtime handler: the reference bridge + host-local, for comparison
BRIDGE_NAME = "vndrefbr0"
BRIDGE_SUBNET = "10.250.0.0/24"  # outside the VNet and the lab's internet range; no traffic goes there
ROUNDS = 20


@dataclass
class CriNode:
    lab: object
    vm: P.Vm
    tmp: Path
    ctd: Containerd
    client: CriClient
    snapshotter: str

    @property
    def state_dir(self) -> str:
        return self.lab.plan.state_dir(self.vm)

    def diagnostics(self) -> str:
        return f"\n--- containerd log (tail) ---\n{self.ctd.log_tail()}"


# --- containerd's configuration -----------------------------------------------
def _s(value: str) -> str:
    """A TOML basic string (JSON's escaping is TOML's for these)."""
    return json.dumps(str(value))


def containerd_config(ctd: Containerd, bin_dir: Path, conf_dir: str, runtimes: dict[str, dict],
                      snapshotter: str) -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_s(ctd.root)}",
        f"state = {_s(ctd.state)}",
        f"temp = {_s(ctd.tmp / 'temp')}",
        # Snapshotters that cannot work here: skipped at once instead of probed and logged.
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]',
        "",
        "[grpc]",
        f"  address = {_s(ctd.socket)}",
        "[debug]",
        '  level = "info"',
        "",
        "[plugins]",
        # The opt plugin creates its directory at start (default /opt/containerd, the host's).
        '  [plugins."io.containerd.internal.v1.opt"]',
        f"    path = {_s(ctd.tmp / 'opt')}",
        f"  {cri}]",
        f"    sandbox_image = {_s(pause_image.IMAGE)}",
        # Pods' netns under <state>/io.containerd.grpc.v1.cri/netns, not /run/netns.
        "    netns_mounts_under_state_dir = true",
        # This machine lacks CAP_SYS_RESOURCE: the sandbox's default oom_score_adj
        # (-998, below ours) could not be set; restricted, it stays at ours.
        "    restrict_oom_score_adj = true",
        # ip netns exec mounts a fresh /sys without securityfs: no AppArmor to load profiles into.
        "    disable_apparmor = true",
        '    stream_server_address = "127.0.0.1"',
        '    stream_server_port = "0"',
        f"    {cri}.cni]",
        f"      bin_dir = {_s(bin_dir)}",
        f"      conf_dir = {_s(conf_dir)}",
        "      max_conf_num = 1",
        f"    {cri}.containerd]",
        f"      snapshotter = {_s(snapshotter)}",
        '      default_runtime_name = "runc"',
        f"      {cri}.containerd.runtimes.runc]",
        '        runtime_type = "io.containerd.runc.v2"',
    ]
    for name, extra in runtimes.items():
        lines += [f"      {cri}.containerd.runtimes.{name}]", '        runtime_type = "io.containerd.runc.v2"']
        if "cni_conf_dir" in extra:
            lines.append(f"        cni_conf_dir = {_s(extra['cni_conf_dir'])}")
        if "binary" in extra:
            lines += [f"        {cri}.containerd.runtimes.{name}.options]",
                      f"          BinaryName = {_s(extra['binary'])}"]
    return "\n".join(lines) + "\n"


def write_conflist(directory: Path, conflist: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"10-{conflist['name']}.conflist").write_text(json.dumps(conflist, indent=2))


def cni_bin_dir(lab, vm, tmp: Path) -> Path:
    """One directory with every plugin containerd may call (see the module doc)."""
    bin_dir = tmp / "cni-bin"
    bin_dir.mkdir()
    for name in ("vnetdp", "vnetdp-ipam"):
        os.symlink(os.path.join(lab.cni_bin_dir(vm), name), bin_dir / name)
    for name in REFERENCE_BINARIES:
        os.symlink(f"{REFERENCE_PLUGINS}/{name}", bin_dir / name)
    return bin_dir


def serving(ctd: Containerd) -> bool:
    try:
        return ctd.socket.exists() and ctd.ctr("version", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start(ctd: Containerd, client: CriClient, write_config) -> str:
    """containerd up with CRI answering; the snapshotter it uses. overlayfs
    first; native when this kernel or file system refuses overlay (checked
    with ``ctr plugins ls`` before CRI, which does not start without its
    snapshotter)."""
    for snapshotter in ("overlayfs", "native"):
        write_config(snapshotter)
        ctd.start()
        deadline = time.monotonic() + 60
        while not serving(ctd):
            if not ctd.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not serve its socket\n{ctd.log_tail()}")
            time.sleep(0.1)
        status = ctd.plugin_status("io.containerd.snapshotter.v1", snapshotter)
        if status != "ok" and snapshotter != "native":
            ctd.stop()
            continue
        if ctd.plugin_status("io.containerd.grpc.v1", "cri") == "error":
            raise RuntimeError(f"containerd's CRI plugin did not load\n{ctd.log_tail()}")
        client.wait_ready(60, alive=ctd.alive)
        return snapshotter
    raise RuntimeError("unreachable")


@pytest.fixture(scope="module")
def cri_node(lab):
    vm = lab.plan.vm(1)
    tmp = Path(tempfile.mkdtemp(prefix="vnd-ctd-"))
    ctd = Containerd(vm.ns, tmp, keep=[P.LAB_ROOT])
    client = CriClient(str(ctd.socket))
    ready = False
    try:
        image = pause_image.build(tmp)
        bin_dir = cni_bin_dir(lab, vm, tmp)
        node_conflist = json.loads((Path(lab.cni_conf_dir(vm)) / "10-vnetdp.conflist").read_text())
        # The node's own conflist, its vnetdp entry asking for what the node does not do.
        refused = {**node_conflist, "name": "vnetdp-refused",
                   "plugins": [{**p, "enableSnat": False} if p["type"] == "vnetdp" else p
                               for p in node_conflist["plugins"]]}
        write_conflist(tmp / "net.d-refused", refused)
        write_conflist(tmp / "net.d-bridge", {
            "cniVersion": "1.0.0", "name": "vnd-ref-bridge",
            "plugins": [{"type": "bridge", "bridge": BRIDGE_NAME, "isGateway": True, "ipMasq": False,
                         "hairpinMode": False,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": BRIDGE_SUBNET}]],
                                  "dataDir": str(tmp / "host-local")}},
                        # the same chain as vnetdp's, for a like-for-like time
                        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]})
        runtimes = {REFUSED: {"cni_conf_dir": tmp / "net.d-refused"},
                    NO_START: {"binary": tmp / "no-such-runc"},   # the VM's conflist, a runc that is not there
                    BRIDGE: {"cni_conf_dir": tmp / "net.d-bridge"}}
        (tmp / "pod-logs").mkdir()

        def write_config(snapshotter: str) -> None:
            ctd.config.write_text(containerd_config(ctd, bin_dir, lab.cni_conf_dir(vm), runtimes, snapshotter))

        snapshotter = start(ctd, client, write_config)
        imported = ctd.ctr("images", "import", "--snapshotter", snapshotter, str(image))
        assert imported.returncode == 0, imported.stderr + ctd.log_tail()
        client.wait_image(pause_image.IMAGE)
        ready = True
        yield CriNode(lab, vm, tmp, ctd, client, snapshotter)
    finally:
        problems = []
        try:
            if ctd.alive():
                problems += client.remove_all()
        except Exception as e:  # containerd not answering: stop() forces what is left
            problems.append(f"CRI cleanup: {e}")
        client.close()
        ctd.stop(sandbox_ids=client.created)
        run(["ip", "-n", vm.ns, "link", "del", BRIDGE_NAME], check=False)
        log = ctd.log_tail(6000)
        shutil.rmtree(tmp, ignore_errors=True)
        # Only after a good start: a failed one raises its own error, which this would hide.
        if ready and (ctd.unmounted or ctd.killed or problems):
            pytest.fail(f"containerd left things behind: unmounted {ctd.unmounted}, killed {ctd.killed}, "
                        f"CRI: {problems}\n{log}")


@pytest.fixture(autouse=True)
def no_sandbox_outlives_its_test(cri_node):
    """A test that fails half-way leaves no sandbox to the next one (every
    test here uses cri_node; the module's teardown checks the rest)."""
    yield
    if cri_node.ctd.alive():
        try:
            cri_node.client.remove_all()
        except CriError:
            pass


# --- what the node holds --------------------------------------------------------
def node_state(lab, vm) -> dict:
    """Everything vnetdp keeps per pod on ``vm``: IPAM allocations, pod
    records, host veths, endpoint map entries."""
    state_dir = lab.plan.state_dir(vm)
    with Store(state_dir).transaction() as state:
        allocations = sorted((a.container_id, a.ifname, a.address) for a in state.allocations)
    records = sorted((r.container_id, r.ifname, r.address) for r in PodRecords(state_dir).all())
    with netns.enter(vm.ns), IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    with netns.enter(vm.ns), lab.node(vm).maps() as maps:
        endpoints = sorted(str(ip) for ip in maps.endpoints())
    return {"allocations": allocations, "records": records,
            "host_links": sorted(n for n in names if naming.is_host_ifname(n)), "endpoints": endpoints}


@dataclass
class Sandbox:
    id: str
    ip: str
    pid: int      # the pause process: /proc/<pid>/ns/net is the pod's netns
    netns: str    # the bind mount containerd made (in its own mount namespace)
    status: dict


def inspect(node: CriNode, sandbox_id: str) -> Sandbox:
    reply = node.client.pod_sandbox_status(sandbox_id, verbose=True)
    info = json.loads(reply["info"]["info"])  # containerd's SandboxInfo
    namespaces = info["runtimeSpec"]["linux"]["namespaces"]
    path = next(n.get("path", "") for n in namespaces if n["type"] == "network")
    return Sandbox(sandbox_id, reply["status"]["network"]["ip"], int(info["pid"]), path, reply["status"])


def in_pod(sandbox: Sandbox, argv: list[str], timeout: float = 30):
    return run(["nsenter", "-t", str(sandbox.pid), "-n", *argv], check=False, timeout=timeout)


def quiet(node: CriNode) -> bool:
    """containerd holds nothing for a sandbox: no mount under its directory
    (netns bind mounts, rootfs, /dev/shm) and no shim."""
    return not node.ctd.mounts_under(node.tmp) and not node.ctd.shims()


# --- the tests --------------------------------------------------------------------
def test_containerd_answers_cri_v1(cri_node):
    version = cri_node.client.version()
    assert version["runtime_name"] == "containerd" and version["runtime_api_version"].startswith("v1"), version
    assert cri_node.client.image_status(pause_image.IMAGE) is not None


def test_a_pod_sandbox_gets_a_vnet_address_reaches_the_peer_and_the_internet_and_leaves_nothing(cri_node):
    lab, vm, client = cri_node.lab, cri_node.vm, cri_node.client
    before = node_state(lab, vm)
    config = pod_sandbox_config("vnd-web", namespace="vnd-test", log_directory=str(cri_node.tmp / "pod-logs"))
    try:
        sid = client.run_pod_sandbox(config)
    except CriError as e:
        pytest.fail(f"RunPodSandbox failed: {e}{cri_node.diagnostics()}")
    sandbox = inspect(cri_node, sid)
    assert sandbox.status["state"] == cri_proto.SANDBOX_READY
    assert sandbox.ip in {str(a) for a in vm.secondaries(lab.plan.pool)}, sandbox.ip
    # The netns is containerd's bind mount under its state dir, not /run/netns.
    assert sandbox.netns.startswith(str(cri_node.ctd.netns_dir) + "/cni-"), sandbox.netns
    assert os.path.exists(sandbox.netns)  # the mount point file (the mount itself is containerd's)

    during = node_state(lab, vm)
    assert (sid, "eth0", sandbox.ip) in during["allocations"]
    assert (sid, "eth0", sandbox.ip) in during["records"]
    assert naming.host_ifname(sid, "eth0") in during["host_links"]
    assert sandbox.ip in during["endpoints"]
    record = PodRecords(cri_node.state_dir).get(sid, "eth0")
    assert (record.netns, record.k8s_pod, record.k8s_namespace) == (sandbox.netns, "vnd-web", "vnd-test")

    # Inside the pod: the address on eth0, and traffic both ways.
    addr = in_pod(sandbox, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    assert f"inet {sandbox.ip}/32" in addr.stdout, addr.stdout + addr.stderr
    assert probe.ping(lab.plan.peer, sandbox.ip).ok, "peer VM -> pod"
    for target in (P.PEER_IP, lab.pod_address(lab.plan.vm(2), 1), P.INET_IP):
        out = in_pod(sandbox, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", str(target)])
        assert out.returncode == 0, f"pod -> {target}: {out.stdout}{out.stderr}"

    # Stop releases the network: CNI DEL, then containerd unmounts and removes the netns.
    client.stop_pod_sandbox(sid)
    assert client.pod_sandbox_status(sid)["status"]["state"] == cri_proto.SANDBOX_NOTREADY
    assert node_state(lab, vm) == before
    assert not os.path.exists(sandbox.netns)
    client.remove_pod_sandbox(sid)
    assert sid not in {s["id"] for s in client.list_pod_sandbox()}
    with pytest.raises(CriError):
        client.pod_sandbox_status(sid)
    assert node_state(lab, vm) == before
    assert probe.wait_until(lambda: quiet(cri_node)), (cri_node.ctd.mounts_under(cri_node.tmp), cri_node.ctd.shims())


@pytest.mark.parametrize("handler,expected", [
    # vnetdp refuses the ADD (code 7: enableSnat contradicts the node's setting);
    # containerd then calls DEL and removes the netns.
    (REFUSED, ("enableSnat",)),
    # ADD succeeds, then runc cannot start the sandbox: containerd must undo the ADD.
    (NO_START, ("no-such-runc", "task")),
])
def test_a_sandbox_that_fails_to_start_leaves_nothing(cri_node, handler, expected):
    lab, vm, client = cri_node.lab, cri_node.vm, cri_node.client
    before = node_state(lab, vm)
    listed = client.list_pod_sandbox()
    with pytest.raises(CriError) as failed:
        client.run_pod_sandbox(pod_sandbox_config(f"vnd-fail-{handler}"), runtime_handler=handler)
    assert any(word in failed.value.details for word in expected), failed.value.details
    assert node_state(lab, vm) == before
    assert client.list_pod_sandbox() == listed  # containerd keeps a sandbox only when its cleanup failed
    netns_dir = cri_node.ctd.netns_dir
    assert not netns_dir.exists() or os.listdir(netns_dir) == []
    assert probe.wait_until(lambda: quiet(cri_node)), (cri_node.ctd.mounts_under(cri_node.tmp), cri_node.ctd.shims())


def _spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"{statistics.median(ms):7.1f} / {p90:7.1f} / {ms[-1]:7.1f}"


def test_run_pod_sandbox_time_vnetdp_and_the_reference_bridge(cri_node, record_property):
    """RunPodSandbox's duration (the sandbox is ready when it returns), one
    sandbox at a time, vnetdp and bridge alternating; printed, not asserted."""
    lab, vm, client = cri_node.lab, cri_node.vm, cri_node.client
    before = node_state(lab, vm)
    secondaries = {str(a) for a in vm.secondaries(lab.plan.pool)}
    times: dict[str, dict[str, list[float]]] = {h: {"run": [], "stop": [], "remove": []} for h in ("vnetdp", "bridge")}

    def one(kind: str, i: int, keep: bool) -> None:
        handler = BRIDGE if kind == "bridge" else ""
        t0 = time.perf_counter()
        try:
            sid = client.run_pod_sandbox(pod_sandbox_config(f"vnd-{kind}-{i}"), runtime_handler=handler)
        except CriError as e:
            pytest.fail(f"RunPodSandbox ({kind}, round {i}) failed: {e}{cri_node.diagnostics()}")
        t1 = time.perf_counter()
        ip = client.pod_sandbox_status(sid)["status"]["network"]["ip"]
        assert (ip in secondaries) if kind == "vnetdp" else ip.startswith("10.250.0."), (kind, ip)
        t2 = time.perf_counter()
        client.stop_pod_sandbox(sid)
        t3 = time.perf_counter()
        client.remove_pod_sandbox(sid)
        t4 = time.perf_counter()
        if keep:
            times[kind]["run"].append(t1 - t0)
            times[kind]["stop"].append(t3 - t2)
            times[kind]["remove"].append(t4 - t3)

    for kind in ("vnetdp", "bridge"):  # warm-up: first unpack, the bridge's creation
        one(kind, 0, keep=False)
    for i in range(1, ROUNDS + 1):
        for kind in ("vnetdp", "bridge"):
            one(kind, i, keep=True)

    report = [f"containerd {cri_node.snapshotter} snapshotter, {ROUNDS} sandboxes per plugin, one at a time "
              "(ms: median / p90 / max)"]
    for kind, t in times.items():
        report.append(f"  {kind:7s} RunPodSandbox {_spread(t['run'])}   StopPodSandbox {_spread(t['stop'])}"
                      f"   RemovePodSandbox {_spread(t['remove'])}")
        record_property(f"{kind}_run_median_ms", round(statistics.median(t["run"]) * 1000, 1))
    print("\n" + "\n".join(report))
    assert node_state(lab, vm) == before
    assert probe.wait_until(lambda: quiet(cri_node)), (cri_node.ctd.mounts_under(cri_node.tmp), cri_node.ctd.shims())
