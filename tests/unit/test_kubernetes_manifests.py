"""deploy/: the DaemonSet against the Kubernetes API schemas (kubernetes-validate, which
ships them: no network), and what a CNI DaemonSet must get right; the Containerfile,
the image build script and the systemd unit. The image itself: tests/image."""
from __future__ import annotations

import configparser
import copy
import inspect
import re
import shlex
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from vnetdp import cli, install

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
CLIENT = "/usr/local/lib/vnetdp/vnetdp-cni-client"
OLDEST_SUPPORTED = "1.25"  # containerd 1.6's era; the newest schemas shipped are checked too


def documents() -> list[dict]:
    with open(K8S / "daemonset.yaml") as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture
def daemonset() -> dict:
    [ds] = [d for d in documents() if d["kind"] == "DaemonSet"]
    return ds


def pod(ds: dict) -> dict:
    return ds["spec"]["template"]["spec"]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def host_path(ds: dict, mount: dict) -> str:
    [volume] = [v for v in pod(ds)["volumes"] if v["name"] == mount["name"]]
    return volume["hostPath"]["path"]


def test_every_document_is_a_valid_kubernetes_object():
    assert [d["kind"] for d in documents()] == ["DaemonSet"]  # no RBAC: nothing reads the API
    versions = sorted({OLDEST_SUPPORTED, kubernetes_validate.latest_version()})
    for doc in documents():
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_really_checks(daemonset):
    assert any(v.startswith(OLDEST_SUPPORTED) for v in all_versions())
    # (The schemas leave enums such as mountPropagation to the API server: the tests below check those.)
    for breakage in (lambda d: pod(d).update(hostNetworking=True),
                     lambda d: pod(d)["containers"][0]["securityContext"].update(privileged="yes"),
                     lambda d: pod(d)["initContainers"][0].pop("name")):
        broken = copy.deepcopy(daemonset)
        breakage(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_it_runs_on_every_node_in_the_nodes_network_namespace(daemonset):
    spec = pod(daemonset)
    assert daemonset["metadata"]["namespace"] == "kube-system"
    assert spec["hostNetwork"] is True
    assert not spec.get("hostPID")  # the netns arrives as a descriptor: no other process is looked up
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint, every effect
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    for c in spec["initContainers"] + spec["containers"]:
        assert c["securityContext"]["privileged"] is True
        assert c["image"] == spec["containers"][0]["image"]
        assert "memory" in c["resources"]["requests"] and "cpu" not in c["resources"].get("limits", {})


def test_host_directories_are_mounted_at_their_own_paths_with_the_right_propagation(daemonset):
    spec = pod(daemonset)
    [init], [agent] = spec["initContainers"], spec["containers"]
    want = {  # path: (propagation, read-only), in (init, agent)
        "/opt/cni/bin": ((None, False), (None, True)),
        "/etc/cni/net.d": ((None, False), None),
        "/var/lib/vnetdp": ((None, False), (None, False)),
        "/sys/fs/bpf": (("Bidirectional", False), ("Bidirectional", False)),
        "/run/netns": (None, ("HostToContainer", False)),
        "/var/log": ((None, False), (None, False)),
        "/lib/modules": ((None, True), (None, True)),
        "/usr/src": ((None, True), (None, True)),
    }
    for i, container in enumerate((init, agent)):
        got = mounts(container)
        assert set(got) == {p for p, w in want.items() if w[i]}, container["name"]
        for path, m in got.items():
            assert host_path(daemonset, m) == path  # same path on both sides: written paths mean the same file
            assert (m.get("mountPropagation"), m.get("readOnly", False)) == want[path][i], (container["name"], path)
    for v in spec["volumes"]:
        assert v["hostPath"]["type"] in ("Directory", "DirectoryOrCreate")


def test_the_init_step_installs_with_the_nodes_flags(daemonset, monkeypatch):
    [init] = pod(daemonset)["initContainers"]
    assert init["command"] == ["vnetdp-node-init"]
    args = init["args"]
    for flag in ("--cni-bin-dir=/opt/cni/bin", "--cni-conf-dir=/etc/cni/net.d", "--state-dir=/var/lib/vnetdp",
                 "--bpffs-dir=/sys/fs/bpf/vnetdp", "--cni-version=1.0.0"):
        assert flag in args
    # vnetdp-node-init passes all but the CNI directories to `vnetdp install`, whose parser must take them.
    seen = {}
    signature = inspect.signature(install.install)
    monkeypatch.setattr(install, "install", lambda *a, **kw: seen.update(signature.bind(*a, **kw).arguments) or [])
    rest = [a for a in args if not a.startswith(("--cni-bin-dir=", "--cni-conf-dir="))]
    assert cli.main(["install", "--cni-bin-dir", "/x", "--cni-conf-dir", "/y", *rest]) == 0
    assert (seen["state_dir"], seen["bpffs_dir"], seen["cni_version"]) == ("/var/lib/vnetdp", "/sys/fs/bpf/vnetdp", "1.0.0")
    assert install.CONFLIST_VERSION == "1.0.0"  # and so would the conflist without the flag


def test_the_agent_matches_the_init_step_and_is_probed_through_the_runtimes_path(daemonset):
    spec = pod(daemonset)
    [init], [agent] = spec["initContainers"], spec["containers"]
    assert agent["command"] == ["vnetdp", "agent"]
    for flag in ("--state-dir=", "--bpffs-dir="):
        assert [a for a in agent["args"] if a.startswith(flag)] == [a for a in init["args"] if a.startswith(flag)]
    for probe in ("readinessProbe", "livenessProbe"):
        command = agent[probe]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"]
        words = shlex.split(command[2])
        assert "CNI_COMMAND=VERSION" in words and "VNETDP_STATE_DIR=/var/lib/vnetdp" in words
        assert CLIENT in words and words[words.index(CLIENT) + 1] == "vnetdp"
        assert agent[probe]["timeoutSeconds"] >= 2


def test_the_containerfile_builds_offline_from_debian_packages():
    text = (K8S / "Containerfile").read_text()
    packages = re.search(r'^ARG PACKAGES="(.*)"$', text, re.M).group(1).split()
    build_packages = re.search(r'^ARG BUILD_PACKAGES="(.*)"$', text, re.M).group(1).split()
    assert {"python3-bpfcc", "python3-pyroute2", "python3-cffi", "iproute2", "python3-venv"} <= set(packages)
    assert {"gcc", "libc6-dev"} <= set(build_packages)
    assert not [p for p in packages if p.startswith("linux-headers")]  # the node's own, mounted
    # Dependencies: Debian's where new enough, else wheels fetched by build-image.sh; pip checks
    # them all in the build, offline, and never reaches for an index.
    assert "--no-index --find-links /wheels" in text and "--no-deps" not in text and "pip check" in text
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for source in ("pyproject.toml", "vnetdp", "cni", "bpf", "cni/vnetdp.c",
                   "deploy/kubernetes/vnetdp-node-init"):
        assert re.search(rf"^COPY {re.escape(source)} ", text, re.M), source
    assert f"COPY --from=client /vnetdp-cni-client {CLIENT}" in text
    assert "--no-index" in text and "--system-site-packages" in text and "-static" in text
    script = (K8S / "build-image.sh").read_text()
    assert "--network=none" in script and "--pull=never" in script and "--variant=minbase" in script
    assert "unshare --mount --propagation private" in script
    assert '["project"]["dependencies"]' in script and "pip download" in script


def test_the_init_scripts_client_is_the_one_the_image_has():
    text = (K8S / "vnetdp-node-init").read_text()
    assert f'CLIENT = "{CLIENT}"' in text
    assert text.startswith("#!/opt/vnetdp/venv/bin/python\n")


def test_the_systemd_unit_runs_the_agent():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(REPO / "deploy" / "systemd" / "vnetdp-agent.service")
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    assert exec_start[0].endswith("/.venv/bin/vnetdp") and exec_start[1] == "agent"
    assert unit["Service"]["Restart"] == "always"
    assert "network-online.target" in unit["Unit"]["After"].split()
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
