"""The installed CNI plugins in a lab VM, called exactly as runtimes call them:
every command and version, every error path, DEL/CHECK/GC semantics, Azure
conflists, chaining with the reference portmap plugin."""
from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import shutil
import tempfile

import pytest
from pyroute2 import IPRoute

from lab_pods import address_of, host_port_serves
from vnetdp import defaults, links, naming, netns, rtnl
from vnetdp.agent import server, wire
from vnetdp.cni.spec import SUPPORTED_VERSIONS, Code
from vnetdp.datapath import attach, configured, snat
from vnetdp.ipam.store import Store
from vnetdp.lab import cni, probe
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns, run
from vnetdp.network.records import PodRecords

CNI_DIR = pathlib.Path(__file__).resolve().parents[2] / "cni"
REFERENCE_PLUGINS = "/usr/lib/cni"
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_in_every_version(lab, pods, version):
    conf = cni.network_config(version=version)
    ns, added = pods.add(conf)
    out = added.output
    assert out["cniVersion"] == version
    assert ("version" in out["ips"][0]) == version.startswith("0.")
    assert out["ips"][0]["gateway"] == "169.254.1.1" and out["ips"][0]["address"].endswith("/32")
    assert out["interfaces"][out["ips"][0]["interface"]]["sandbox"] == netns.path_of(ns)
    address = address_of(added)
    assert pods.allocation(ns) == address
    assert probe.ping(lab.plan.peer, address, count=1).ok
    if version != "0.3.0" and version != "0.3.1":  # CHECK exists from 0.4.0
        assert pods.call("CHECK", ns, {**conf, "prevResult": out}).ok
    assert pods.call("DEL", ns, {**conf, "prevResult": out}).ok
    assert pods.gone(ns, address)
    assert pods.call("DEL", ns, conf).ok  # twice: still fine


def test_del_after_the_netns_is_gone_releases_everything(lab, pods):
    ns, added = pods.add()
    run(["ip", "netns", "del", ns])
    assert pods.call("DEL", ns).ok
    assert pods.gone(ns, address_of(added))


def _delete_route(pods, ns, address):
    with netns.enter(pods.vm.ns), IPRoute() as ipr:
        ipr.route("del", dst=f"{address}/32", scope=links.SCOPE_LINK)


def _detach_program(pods, ns, address):
    node = pods.lab.node(pods.vm)
    name = naming.host_ifname(ns, "eth0")
    with netns.enter(pods.vm.ns), IPRoute() as ipr:
        attach.detach(ipr.link_lookup(ifname=name)[0], "ingress", node.bpffs.link_pin(name, "ingress"))


def _delete_map_entry(pods, ns, address):
    with netns.enter(pods.vm.ns), pods.lab.node(pods.vm).maps() as m:
        m.delete_endpoint(address)


@pytest.mark.parametrize("damage,says", [
    (_delete_route, "no route"), (_detach_program, "not attached"), (_delete_map_entry, "endpoint entry"),
], ids=["route", "program", "map-entry"])
def test_check_finds_what_is_broken_in_the_live_datapath(lab, pods, damage, says):
    ns, added = pods.add()
    assert pods.call("CHECK", ns).ok
    damage(pods, ns, address_of(added))
    check = pods.call("CHECK", ns)
    assert check.code == Code.CHECK_FAILED and says in check.output["msg"]


def test_check_of_an_unknown_container_is_code_3(lab, pods):
    assert pods.call("CHECK", pods.netns()).code == Code.UNKNOWN_CONTAINER


@pytest.mark.parametrize("conf,kw,code", [
    (b'{"cniVersion": "1.1.0", "type": "vnetdp"', {}, Code.DECODING_FAILURE),
    (cni.network_config(version="0.1.0"), {}, Code.INCOMPATIBLE_VERSION),
    (cni.network_config(nicAttach="ebpf"), {}, Code.INVALID_CONFIG),
    (cni.network_config(ipam={"type": "no-such-ipam"}), {}, Code.INVALID_CONFIG),
    (cni.network_config(multiTenancy=True), {}, Code.UNSUPPORTED_FIELD),
    (cni.network_config(), {"pod_netns": ""}, Code.INVALID_ENV),
    (cni.network_config(), {"pod_netns": "/run/netns/vnd-no-such-pod"}, Code.INVALID_ENV),
    (cni.network_config(), {"container_id": ""}, Code.INVALID_ENV),
], ids=["malformed-stdin", "version", "bad-field", "missing-ipam-plugin", "refused-azure-field",
        "no-netns", "netns-gone", "no-container-id"])
def test_bad_input_gets_its_code_and_changes_nothing(lab, pods, conf, kw, code):
    ns = pods.netns()
    state_before = open(Store(lab.plan.state_dir(pods.vm)).path).read()
    args = {"container_id": ns, "pod_netns": netns.path_of(ns), **kw}
    call = lab.cni(pods.vm, "ADD", conf, **args)
    assert call.code == code, call.output
    assert call.output["msg"]
    assert open(Store(lab.plan.state_dir(pods.vm)).path).read() == state_before
    assert not pods.host_link(ns)


def test_gc_releases_exactly_the_attachments_not_listed(lab, pods):
    keep, _ = pods.add()
    drop = [pods.add()[0] for _ in range(2)]
    dropped = {ns: pods.allocation(ns) for ns in drop}
    session_pod = lab.plan.pod_ns(pods.vm, 1)
    valid = [{"containerID": c, "ifname": "eth0"} for c in (keep, session_pod)]
    gc = lab.cni(pods.vm, "GC", cni.network_config(**{"cni.dev/valid-attachments": valid}))
    assert gc.ok, gc.output
    for ns, address in dropped.items():
        assert pods.gone(ns, address)
    assert pods.call("CHECK", keep).ok
    assert lab.cni(pods.vm, "CHECK", container_id=session_pod,
                   pod_netns=netns.path_of(session_pod)).ok


def test_gc_forgets_everything_of_an_endpoint_whose_record_was_lost(lab, pods):
    """An ADD interrupted before its record, then its netns removed: GC finds the
    map entry of a veth that is gone and must drop the address's SNAT flows and
    rates with it, or the next pod given the address would inherit them."""
    rates = {"ingressRate": 8_000_000, "ingressBurst": 1_000_000, "egressRate": 8_000_000, "egressBurst": 1_000_000}
    ns, call = pods.add(cni.network_config(capabilities={"bandwidth": True}, runtimeConfig={"bandwidth": rates}))
    address = address_of(call)
    assert probe.ping(ns, str(P.INET_IP)).ok

    def held() -> tuple[bool, bool, int]:
        with netns.enter(pods.vm.ns), lab.node(pods.vm).maps() as m:
            return (m.endpoint(address) is not None, m.bandwidth(address) is not None,
                    sum(str(f.pod[0]) == address for f in snat.flows(m)))

    assert held() == (True, True, 1)
    PodRecords(lab.plan.state_dir(pods.vm)).remove(ns, "eth0")
    run(["ip", "netns", "del", ns])
    assert probe.wait_until(lambda: not pods.host_link(ns), 5), "the host veth outlived its netns"
    valid = [{"containerID": lab.plan.pod_ns(pods.vm, 1), "ifname": "eth0"}]
    assert lab.cni(pods.vm, "GC", cni.network_config(**{"cni.dev/valid-attachments": valid})).ok
    assert held() == (False, False, 0)
    assert pods.allocation(ns) is None


def test_the_agent_configures_the_node_as_it_starts(lab, tmp_path):
    """So that no pod waits while the kernel creates the NIC's tcx link: with
    the NIC's program and the record of the last configure gone, what the
    agent runs at start puts both back (and a node not installed is left alone)."""
    vm = lab.plan.vm(1)
    node = lab.node(vm)
    with netns.enter(vm.ns):
        with IPRoute() as ipr:
            nic = node.nic(ipr)
        pin = node.bpffs.link_pin(nic.name, "ingress")
        attach.detach(nic.index, "ingress", pin)
        configured.forget(node)
        server._configure_node(str(tmp_path), lab.node_bpffs_dir(vm))
        assert attach.attached(nic.index, "ingress", pin) is None
        server._configure_node(lab.plan.state_dir(vm), lab.node_bpffs_dir(vm))
        assert attach.attached(nic.index, "ingress", pin).prog_id
        with rtnl.Rtnl() as rt:
            assert configured.holds(node, configured.observe(node, rt))


def test_status_and_version(lab, pods):
    assert lab.cni(pods.vm, "STATUS").ok
    version = lab.cni(pods.vm, "VERSION", {"cniVersion": "1.0.0"})
    assert version.output["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_the_agent_serves_calls_and_matches_the_in_process_path(lab, pods):
    """Straight to the agent's socket (no fallback can hide a dead agent),
    then the same call in-process: the same result."""
    ns = pods.netns()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": ns, "CNI_NETNS": netns.path_of(ns), "CNI_IFNAME": "eth0",
           "CNI_PATH": lab.cni_bin_dir(pods.vm), "VNETDP_STATE_DIR": lab.plan.state_dir(pods.vm),
           "VNETDP_BPFFS_DIR": lab.node_bpffs_dir(pods.vm), "VNETDP_IPAM_URL": cni.nmagent_url(),
           "VNETDP_LOG_DIR": lab.log_dir(pods.vm)}
    reply = wire.call(defaults.agent_socket(lab.plan.state_dir(pods.vm)), "vnetdp", env,
                      json.dumps(cni.network_config()).encode())
    assert reply is not None, "the agent did not answer"
    rc, stdout, stderr = reply
    assert rc == 0, (stdout, stderr)
    via_agent = json.loads(stdout)
    assert pods.allocation(ns) == str(ipaddress.IPv4Interface(via_agent["ips"][0]["address"]).ip)
    ns2, in_process = pods.add(agent=False)
    strip = lambda out: json.dumps(out["ips"][0]["gateway"]) + str(sorted(out))  # noqa: E731
    assert strip(via_agent) == strip(in_process.output)
    assert pods.call("DEL", ns2, agent=False).ok and pods.gone(ns2, address_of(in_process))


def azure_entry(name: str) -> dict:
    conflist = json.loads((CNI_DIR / name).read_text())
    entry = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    entry["type"], entry["ipam"] = "vnetdp", {**entry["ipam"], "type": "vnetdp-ipam"}
    return entry


@pytest.mark.parametrize("name", ["azure-linux.conflist", "azure-linux-transparent.conflist"])
def test_azure_conflists_work_after_renaming_the_types(lab, pods, node_set, name):
    conf = azure_entry(name)
    refused = pods.call("ADD", pods.netns(), conf)  # the node does not route 169.254.20.10 via the host
    assert refused.code == Code.INVALID_CONFIG and "ipsToRouteViaHost" in refused.output["msg"]
    node_set(pods.vm, ipsToRouteViaHost=conf["ipsToRouteViaHost"])
    ns, added = pods.add(conf)
    assert added.output["cniVersion"] == "0.3.0"
    with open(os.path.join(lab.log_dir(pods.vm), "vnetdp.log")) as log:
        assert any("accepted and ignored: networkMonitor" in json.loads(line)["msg"] for line in log)
    with netns.enter(pods.vm.ns), lab.node(pods.vm).maps() as m:
        cidrs = m.cidrs()
    assert cidrs[ipaddress.IPv4Network("169.254.20.10/32")].name == "HOST"  # ipsToRouteViaHost
    assert probe.ping(lab.plan.pod_ns(lab.plan.vm(1), 1), address_of(added), count=1).ok
    assert pods.call("DEL", ns, conf).ok


def test_reference_portmap_chained_after_vnetdp_maps_a_host_port(lab, pods):
    """From another VM: the pod's replies must go back through the host's conntrack."""
    conf = cni.network_config(version="1.0.0")
    ns, added = pods.add(conf)
    address = address_of(added)
    portmap = {"cniVersion": "1.0.0", "name": "vnetdp", "type": "portmap", "snat": True,
               "capabilities": {"portMappings": True}, "prevResult": added.output,
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}}
    call = dict(container_id=ns, pod_netns=netns.path_of(ns), plugin="portmap",
                extra_env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # portmap runs iptables
    mapped = cni.invoke(pods.vm.ns, REFERENCE_PLUGINS, "ADD", portmap, **call)
    try:
        assert mapped.ok, mapped.output
        host_port_serves(lab, pods.vm, ns, address, 8080, 18080)
    finally:
        cni.invoke(pods.vm.ns, REFERENCE_PLUGINS, "DEL", portmap, **call)


def test_other_ipam_plugins_are_called_through_cni_path(lab, pods, tmp_path):
    """ipam.type host-local: the reference plugin runs as a process found in CNI_PATH."""
    conf = cni.network_config(version="1.0.0",  # Debian's reference plugins stop at 1.0.0
                              ipam={"type": "host-local", "dataDir": str(tmp_path),
                                    "ranges": [[{"subnet": "10.3.0.0/16", "rangeStart": "10.3.2.200",
                                                 "rangeEnd": "10.3.2.201"}]]})
    ns, added = pods.add(conf, extra_path=(REFERENCE_PLUGINS,))
    assert address_of(added) in ("10.3.2.200", "10.3.2.201")
    assert pods.allocation(ns) is None  # vnetdp-ipam was not involved
    # (from the VM itself: the lab fabric routes only the NIC's own secondary addresses)
    assert probe.ping(pods.vm.ns, address_of(added), count=1).ok
    held = [f for f in os.listdir(tmp_path / "vnetdp") if f.startswith("10.3.")]
    assert held == [address_of(added)]
    assert pods.call("DEL", ns, conf, extra_path=(REFERENCE_PLUGINS,)).ok
    assert not [f for f in os.listdir(tmp_path / "vnetdp") if f.startswith("10.3.")]


def test_a_netns_outside_run_netns_reaches_the_agent_as_a_descriptor(lab, pods):
    """containerd, CRI-O and cnitool name namespaces under other paths; the agent
    (in its own mount namespace, as in a DaemonSet) gets the namespace itself."""
    ns = pods.netns()
    scratch = tempfile.mkdtemp(prefix="vnd-nsmount-")
    path = os.path.join(scratch, "pod-netns")
    open(path, "w").close()
    run(["mount", "--bind", netns.path_of(ns), path])
    try:
        added = lab.cni(pods.vm, "ADD", cni.network_config(), container_id=ns, pod_netns=path)
        assert added.ok, added.output
        assert added.output["interfaces"][1]["sandbox"] == path
        assert probe.ping(lab.plan.peer, address_of(added), count=1).ok
        assert lab.cni(pods.vm, "CHECK", cni.network_config(), container_id=ns, pod_netns=path).ok
        assert lab.cni(pods.vm, "DEL", cni.network_config(), container_id=ns, pod_netns=path).ok
        assert pods.gone(ns, address_of(added))
    finally:
        run(["umount", path])
        shutil.rmtree(scratch)


def test_check_reports_a_shaping_qdisc_the_datapath_would_bypass(lab, pods):
    """What a chained reference bandwidth plugin leaves on the host veth (its tbf)
    never takes effect under vnetdp: CHECK says so instead of passing."""
    ns, added = pods.add()
    host = naming.host_ifname(ns, "eth0")
    in_ns(pods.vm.ns, ["tc", "qdisc", "add", "dev", host, "root", "tbf", "rate", "10mbit", "burst", "32kb",
                       "latency", "25ms"])
    check = pods.call("CHECK", ns)
    assert check.code == Code.CHECK_FAILED and "tbf" in check.output["msg"]
    assert "capabilities.bandwidth" in check.output["msg"]
