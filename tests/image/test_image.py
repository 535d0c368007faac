"""The node image, built and run as the DaemonSet runs it, in a lab VM (SPEC §12).

``make test-image`` (slow: debootstrap and a podman build, ~2 min here) builds
the image with deploy/kubernetes/build-image.sh into a private podman store,
brings up a lab, and on VM 1 replaces the lab's own node (its agent stopped,
its pins, state and plugins removed) with the image run by podman as
daemonset.yaml runs it: privileged, in the VM's network namespace (the pod's
hostNetwork), the same host directories mounted at the same paths with the
same propagation, the kernel headers read-only; first the init step
(vnetdp-node-init with the DaemonSet's flags), then the agent. A pod is then
added through the plugin the init step installed, called the way a runtime
calls it, from the machine (not from the container): it must get an address of
VM 1's pool and reach the peer VM. Containers, the podman namespace and store,
and the lab are removed also on failure.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator

import pytest
import yaml

from podman_host import REPO, PodmanHost, build_image, remove_tree
from vnetdp import defaults, netns
from vnetdp.agent import wire
from vnetdp.lab import cni
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns, run
from vnetdp.lab.topology import Lab

DAEMONSET = REPO / "deploy" / "kubernetes" / "daemonset.yaml"


def daemonset() -> dict:
    with open(DAEMONSET) as f:
        return next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet")


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    top = tempfile.mkdtemp(prefix="vnetdp-image-test-", dir="/var/tmp")
    try:
        started = time.monotonic()
        proc = build_image(os.path.join(top, "store"))
        assert proc.returncode == 0, f"build-image.sh failed:\n{proc.stdout}\n{proc.stderr}"
        print(f"image built in {time.monotonic() - started:.0f} s:\n{proc.stdout}")
        yield os.path.join(top, "store")
    finally:
        remove_tree(top)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(P.Plan("img", vms=2, pool=10))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def podman(store, lab) -> Iterator[PodmanHost]:
    work = tempfile.mkdtemp(prefix="vnetdp-image-run-", dir="/var/tmp")
    host = PodmanHost(store, work)
    try:
        yield host
    finally:
        host.close()
        remove_tree(work)


def stop_lab_agent(lab: Lab, vm: P.Vm) -> None:
    """The lab's own agent of ``vm`` (by the PID the lab recorded, after checking its command line)."""
    with open(lab.state_file) as f:
        pids = [pid for pid, module in json.load(f)["pids"] if module == "vnetdp.cli"]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if b"agent" in cmdline and lab.plan.state_dir(vm).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.05)
            return
    raise AssertionError(f"no lab agent of {vm.name} found")


def fresh_node(lab: Lab, vm: P.Vm) -> None:
    """``vm`` as a node that never had vnetdp: no pins, no state, no plugins, no conflist."""
    stop_lab_agent(lab, vm)
    for d in (lab.node_bpffs_dir(vm), lab.plan.state_dir(vm), lab.cni_bin_dir(vm), lab.cni_conf_dir(vm)):
        remove_tree(d)
        os.makedirs(d)
    assert not os.path.exists(defaults.agent_socket(lab.plan.state_dir(vm)))


def host_mounts(lab: Lab, vm: P.Vm) -> tuple[list[str], list[str]]:
    """podman --mount options for the DaemonSet's init and agent containers: each hostPath
    volume of daemonset.yaml mapped to this VM's directory, at the same path, with the
    DaemonSet's propagation and read-only flags."""
    paths = {"/opt/cni/bin": lab.cni_bin_dir(vm), "/etc/cni/net.d": lab.cni_conf_dir(vm),
             "/var/lib/vnetdp": lab.plan.state_dir(vm), "/sys/fs/bpf": lab.plan.bpffs_dir(vm),
             "/run/netns": netns.NETNS_RUN_DIR, "/var/log": os.path.join(lab.plan.dir, vm.name, "log"),
             "/lib/modules": "/lib/modules", "/usr/src": "/usr/src"}
    os.makedirs(paths["/var/log"], exist_ok=True)
    propagation = {"Bidirectional": "rshared", "HostToContainer": "rslave"}
    spec = daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}

    def options(container: dict) -> list[str]:
        out = []
        for m in container["volumeMounts"]:
            src = paths[volumes[m["name"]]]
            # The node's own /var/log is mounted at /var/log; the lab VM's log directory too.
            dst = m["mountPath"] if m["mountPath"] in ("/var/log", "/lib/modules", "/usr/src") else src
            opt = f"type=bind,src={src},dst={dst}"
            if m.get("readOnly"):
                opt += ",ro=true"
            if m.get("mountPropagation") in propagation:
                opt += f",bind-propagation={propagation[m['mountPropagation']]}"
            out += ["--mount", opt]
        return out

    return options(spec["initContainers"][0]), options(spec["containers"][0])


def translated_args(args: list[str], lab: Lab, vm: P.Vm) -> list[str]:
    """The DaemonSet's flags with the node's paths made this VM's."""
    paths = {"/opt/cni/bin": lab.cni_bin_dir(vm), "/etc/cni/net.d": lab.cni_conf_dir(vm),
             "/var/lib/vnetdp": lab.plan.state_dir(vm), "/sys/fs/bpf/vnetdp": lab.node_bpffs_dir(vm)}
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        out.append(f"{flag}={paths.get(value, value)}" if sep else arg)
    return out


def test_the_image_runs_a_node_as_the_daemonset_does(lab, podman):
    vm = lab.plan.vm(1)
    spec = daemonset()["spec"]["template"]["spec"]
    init, agent = spec["initContainers"][0], spec["containers"][0]
    assert spec["hostNetwork"] and init["securityContext"]["privileged"] and agent["securityContext"]["privileged"]
    init_mounts, agent_mounts = host_mounts(lab, vm)
    common = ["--privileged", "--network", f"ns:{netns.path_of(vm.ns)}"]
    fresh_node(lab, vm)

    # The init step: plugins for the host, conflist, node settings, datapath compiled in the image.
    init_args = translated_args(init["args"], lab, vm) + ["--ipam-url", cni.nmagent_url(), "--set=master=eth0"]
    started = time.monotonic()
    proc = podman.run("vnetdp-test-init", ["--rm", *common, *init_mounts], [*init["command"], *init_args],
                      timeout=600)
    assert proc.returncode == 0, f"init failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"init step: {time.monotonic() - started:.1f} s\n{proc.stdout}")
    assert "(compiled)" in proc.stdout
    podman.containers.remove("vnetdp-test-init")  # --rm: gone already
    bin_dir, conf_dir, state_dir = lab.cni_bin_dir(vm), lab.cni_conf_dir(vm), lab.plan.state_dir(vm)
    assert sorted(os.listdir(bin_dir)) == ["vnetdp", "vnetdp-cni-client", "vnetdp-ipam"]
    with open(os.path.join(bin_dir, "vnetdp")) as f:
        assert f.readline() == "#!/bin/sh\n"  # runs on the host: no interpreter of the image
    with open(os.path.join(conf_dir, "10-vnetdp.conflist")) as f:
        conflist = json.load(f)
    assert conflist["cniVersion"] == "1.0.0"

    # The agent, as the main container.
    proc = podman.run("vnetdp-test-agent", [*common, *agent_mounts],
                      [*agent["command"], *translated_args(agent["args"], lab, vm)], detach=True)
    assert proc.returncode == 0, f"agent did not start:\n{proc.stdout}\n{proc.stderr}"
    socket_path = defaults.agent_socket(state_dir)
    deadline = time.monotonic() + 30
    while not os.path.exists(socket_path):
        assert time.monotonic() < deadline, f"no agent socket:\n{podman.logs('vnetdp-test-agent')}"
        time.sleep(0.1)

    # The readiness probe, run in the container as the kubelet runs it (paths made this VM's).
    probe = [c.replace("/var/lib/vnetdp", state_dir) for c in agent["readinessProbe"]["exec"]["command"]]
    deadline = time.monotonic() + 30
    while (ready := podman.podman("exec", "vnetdp-test-agent", *probe, check=False)).returncode != 0:
        assert time.monotonic() < deadline, f"never ready: {ready.stdout} {ready.stderr}"
        time.sleep(0.5)

    # A pod, through the installed plugin, called from the machine as a runtime calls it.
    conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    pod = lab.plan.pod_ns(vm, 1)
    run(["ip", "netns", "add", pod])
    add = lab.cni(vm, "ADD", conf, container_id=pod, pod_netns=netns.path_of(pod))
    assert add.ok, f"ADD failed: {add.output} {add.stderr}\n{podman.logs('vnetdp-test-agent')}"
    address = ipaddress.IPv4Interface(add.output["ips"][0]["address"]).ip
    assert address in vm.secondaries(lab.plan.pool)
    # It was the containerized agent that served it: the host has no vnetdp interpreter to run it.
    assert wire.call(socket_path, "vnetdp", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')[0] == 0
    shown = in_ns(pod, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"{address}/32" in shown
    in_ns(pod, ["ping", "-c", "3", "-i", "0.2", "-W", "2", str(P.PEER_IP)])

    check = lab.cni(vm, "CHECK", {**conf, "prevResult": add.output}, container_id=pod,
                    pod_netns=netns.path_of(pod))
    assert check.ok, f"CHECK failed: {check.output} {check.stderr}"
    delete = lab.cni(vm, "DEL", conf, container_id=pod, pod_netns=netns.path_of(pod))
    assert delete.ok, f"DEL failed: {delete.output} {delete.stderr}"
    assert "eth0" not in in_ns(pod, ["ip", "-o", "link"]).stdout

    # Stopping the agent leaves a clear, retryable error, never a crash of the plugin.
    podman.podman("stop", "--time", "5", "vnetdp-test-agent")
    again = lab.cni(vm, "ADD", conf, container_id=pod, pod_netns=netns.path_of(pod))
    assert again.code == 11, again
