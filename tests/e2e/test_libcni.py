"""vnetdp called the way Kubernetes runtimes call it: through libcni (the
library inside containerd, CRI-O and podman's CNI backend), here Debian's
libcni 1.1.2 in a small driver (tests/e2e/libcni/main.go, built once per
session). The chain is vnetdp + the reference tuning + portmap plugins, with
capability arguments (portMappings) and CNI_ARGS as a runtime passes them, and
libcni's own result cache for CHECK and DEL. The driver runs in VM 2's network
namespace with a runtime's clean environment.

Every conflist says a cniVersion libcni 1.1.x accepts (up to 1.0.0): a 1.1.0
result is refused by it ("unsupported CNI result version"), as by containerd
1.6/1.7, and Debian's tuning and portmap refuse 1.1.0 configurations."""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import pathlib
import re
import subprocess
from collections.abc import Iterator

import pytest

from lab_pods import Pods, host_port_serves
from libcni.build import DriverUnavailable, build
from vnetdp import netns
from vnetdp.lab import cni, probe
from vnetdp.lab.shell import in_ns, run

REFERENCE_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins: tuning, portmap
RUNTIME_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"  # portmap runs iptables
NETWORK = "vnetdp-libcni"
HOST_PORT, CONTAINER_PORT = 18081, 8080  # (test_cni's portmap test maps 18080)
CAP_ARGS = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]}
SOMAXCONN = "1000"  # what tuning sets in the pod (the kernel's default is 4096)
# Pod slots far above lab_pods' (100 upward, one per pod of every test) and the session's.
_slots = itertools.count(700)


@pytest.fixture(scope="session")
def cnidriver(tmp_path_factory) -> str:
    try:
        return build(tmp_path_factory.mktemp("cnidriver"))
    except DriverUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def conflist(path: pathlib.Path, version: str) -> str:
    """vnetdp, then tuning (a sysctl in the pod), then portmap."""
    vnetdp = {k: v for k, v in cni.network_config().items() if k not in ("cniVersion", "name")}
    path.write_text(json.dumps({"cniVersion": version, "name": NETWORK, "plugins": [
        vnetdp,
        {"type": "tuning", "sysctl": {"net.core.somaxconn": SOMAXCONN},
         "dataDir": str(path.parent / "tuning")},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ]}, indent=2))
    return str(path)


class Runtime:
    """A container runtime on VM 2 that calls the plugins through libcni. It
    undoes everything it made (DEL, mounts, namespaces), also after a failure."""

    def __init__(self, lab, driver: str, tmp: pathlib.Path) -> None:
        self.lab, self.driver, self.tmp = lab, driver, tmp
        self.vm = lab.plan.vm(2)
        self.pods = Pods(lab)  # only its queries: every pod here is made by this runtime
        self.cache_dir = tmp / "cni-cache"
        self.bin_dirs = f"{lab.cni_bin_dir(self.vm)},{REFERENCE_PLUGINS}"
        self.namespaces: list[str] = []
        self.mounts: list[str] = []
        self.attached: list[tuple[str, str, str]] = []  # (conflist, container ID, netns path)

    def pod_netns(self) -> str:
        ns = self.lab.plan.pod_ns(self.vm, next(_slots))
        self.namespaces.append(ns)
        run(["ip", "netns", "add", ns])
        return ns

    def bind_mount(self, ns: str) -> str:
        """The pod's namespace also at a path outside /run/netns, as containerd
        and CRI-O name theirs."""
        path = self.tmp / f"netns-{ns}"
        path.touch()
        run(["mount", "--bind", netns.path_of(ns), str(path)])
        self.mounts.append(str(path))
        return str(path)

    def call(self, command: str, conf: str, container_id: str, netns_path: str) -> subprocess.CompletedProcess:
        argv = ["env", "-i", RUNTIME_PATH, self.driver, command, "--conflist", conf, "--netns", netns_path,
                "--container-id", container_id, "--ifname", "eth0", "--bin-dir", self.bin_dirs,
                "--cache-dir", str(self.cache_dir), "--cap-args", json.dumps(CAP_ARGS),
                "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"]
        return in_ns(self.vm.ns, argv, check=False, timeout=180)

    def check(self, conf: str, container_id: str, netns_path: str) -> subprocess.CompletedProcess:
        """CHECK of the chain less portmap: Debian's portmap 1.1.1 fails every CHECK
        of an IPv4-only pod looking for ip6tables rules its ADD never made
        (containernetworking/plugins#819). libcni's cached result still comes
        from the whole chain's ADD (same network name)."""
        with open(conf) as f:
            doc = json.load(f)
        doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "portmap"]
        checked = self.tmp / f"check-{container_id}.conflist"
        checked.write_text(json.dumps(doc))
        return self.call("check", str(checked), container_id, netns_path)

    def add(self, conf: str, container_id: str, netns_path: str) -> dict:
        self.attached.append((conf, container_id, netns_path))
        proc = self.call("add", conf, container_id, netns_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def cached(self, container_id: str, network: str = NETWORK) -> pathlib.Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-eth0"

    def nat_rules_name(self, container_id: str) -> bool:
        """portmap's NAT rules on the VM name the container (in their comments)."""
        rules = in_ns(self.vm.ns, ["env", RUNTIME_PATH, "iptables-save", "-t", "nat"]).stdout
        return re.search(rf"{re.escape(container_id)}\b", rules) is not None

    def cleanup(self) -> None:
        for conf, container_id, netns_path in reversed(self.attached):
            self.call("del", conf, container_id, netns_path)
        for path in reversed(self.mounts):
            run(["umount", path], check=False)
        for ns in self.namespaces:
            run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def runtime(lab, cnidriver, tmp_path) -> Iterator[Runtime]:
    r = Runtime(lab, cnidriver, tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def pod_address(result: dict) -> str:
    return str(ipaddress.IPv4Interface(result["ips"][0]["address"]).ip)


def assert_attached(runtime: Runtime, result: dict, version: str, ns: str, netns_path: str) -> str:
    """The chain's result is vnetdp's, and the node holds the pod; returns its address."""
    lab, vm = runtime.lab, runtime.vm
    assert result["cniVersion"] == version
    ip = result["ips"][0]
    assert ("version" in ip) == version.startswith("0.")
    assert ip["address"].endswith("/32") and ip["gateway"] == "169.254.1.1"
    address = pod_address(result)
    assert ipaddress.IPv4Address(address) in vm.secondaries(lab.plan.pool)  # 10.3.2.x
    assert result["interfaces"][ip["interface"]]["sandbox"] == netns_path
    assert runtime.pods.intact(ns, address)
    return address


def assert_serves(runtime: Runtime, ns: str, address: str) -> None:
    """The pod answers the peer VM directly and behind its hostPort on the VM's primary IP."""
    lab, vm = runtime.lab, runtime.vm
    assert probe.ping(lab.plan.peer, address, count=1).ok
    host_port_serves(lab, vm, ns, address, CONTAINER_PORT, HOST_PORT)


def assert_detached(runtime: Runtime, ns: str, container_id: str, address: str) -> None:
    assert runtime.pods.gone(ns, address)  # no allocation, host veth, map entry or pod record
    assert not runtime.nat_rules_name(container_id)  # portmap's chains for it are gone
    assert not runtime.cached(container_id).exists()


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_check_del_through_libcni(runtime, tmp_path, version):
    conf = conflist(tmp_path / "vnetdp.conflist", version)
    ns = runtime.pod_netns()
    path = netns.path_of(ns)
    result = runtime.add(conf, ns, path)
    address = assert_attached(runtime, result, version, ns, path)
    record = runtime.pods.record(ns)
    assert (record.network, record.k8s_namespace, record.k8s_pod) == (NETWORK, "default", ns)
    assert in_ns(ns, ["cat", "/proc/sys/net/core/somaxconn"]).stdout.strip() == SOMAXCONN  # tuning ran
    assert runtime.nat_rules_name(ns)  # portmap's DNAT rules for this container
    assert_serves(runtime, ns, address)
    assert runtime.cached(ns).exists()

    check = runtime.check(conf, ns, path)  # prevResult from libcni's cache
    assert check.returncode == 0, check.stderr

    deleted = runtime.call("del", conf, ns, path)
    assert deleted.returncode == 0, deleted.stderr
    assert_detached(runtime, ns, ns, address)
    assert not [p for p in (tmp_path / "tuning").rglob("*") if p.is_file()]
    again = runtime.call("del", conf, ns, path)  # nothing cached, nothing left: still fine
    assert again.returncode == 0, again.stderr
    assert runtime.pods.gone(ns, address)


def test_a_netns_bind_mounted_outside_run_netns(runtime, tmp_path):
    """containerd and CRI-O keep pod namespaces under their own directories; the
    node agent (its own mount namespace) gets the namespace as a descriptor."""
    conf = conflist(tmp_path / "vnetdp.conflist", "1.0.0")
    ns = runtime.pod_netns()
    path = runtime.bind_mount(ns)
    assert not path.startswith(netns.NETNS_RUN_DIR)
    result = runtime.add(conf, ns, path)
    address = assert_attached(runtime, result, "1.0.0", ns, path)
    assert runtime.pods.record(ns).netns == path
    assert_serves(runtime, ns, address)
    check = runtime.check(conf, ns, path)
    assert check.returncode == 0, check.stderr
    deleted = runtime.call("del", conf, ns, path)
    assert deleted.returncode == 0, deleted.stderr
    assert_detached(runtime, ns, ns, address)
    again = runtime.call("del", conf, ns, path)
    assert again.returncode == 0, again.stderr


def test_the_conflist_vnetdp_install_writes(runtime):
    """What a runtime finds in the node's CNI config directory works through libcni as it is."""
    conf = os.path.join(runtime.lab.cni_conf_dir(runtime.vm), "10-vnetdp.conflist")
    with open(conf) as f:
        doc = json.load(f)
    ns = runtime.pod_netns()
    path = netns.path_of(ns)
    result = runtime.add(conf, ns, path)
    address = assert_attached(runtime, result, doc["cniVersion"], ns, path)
    assert_serves(runtime, ns, address)
    check = runtime.check(conf, ns, path)
    assert check.returncode == 0, check.stderr
    deleted = runtime.call("del", conf, ns, path)
    assert deleted.returncode == 0, deleted.stderr
    assert runtime.pods.gone(ns, address)
    assert not runtime.nat_rules_name(ns)
    assert not runtime.cached(ns, doc["name"]).exists()
