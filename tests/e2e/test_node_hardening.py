"""What an attacker, a typo and a bad day did to a node, through the installed
plugins in the lab: each case is refused or contained, with the right code,
and the node and the other pods are left as they were."""
from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Dot1Q, Ether

from lab_pods import address_of
from vnetdp import naming, netns
from vnetdp.cni.spec import Code
from vnetdp.datapath.settings import NodeSettingsFile
from vnetdp.files import atomic_write
from vnetdp.ipam.store import Store
from vnetdp.lab import cni, nmagent, probe
from vnetdp.lab import plan as P
from vnetdp.lab.connstorm import ns_socket
from vnetdp.lab.observe import counters
from vnetdp.lab.shell import in_ns, run


def node_map(lab, vm):
    with netns.enter(vm.ns), lab.node(vm).maps() as m:
        return m.node(), m.cidrs()


def state_of(lab, vm) -> str:
    with open(Store(lab.plan.state_dir(vm)).path) as f:
        return f.read()


def default_routes(ns: str) -> list[str]:
    return in_ns(ns, ["ip", "-4", "route", "show", "default"]).stdout.splitlines()


def own_processes() -> int:
    return len(os.listdir("/proc"))


# --- node safety ---------------------------------------------------------------

def test_vnetdp_as_its_own_ipam_is_refused_by_name(lab, pods):
    before = own_processes()
    call = pods.call("ADD", pods.netns(), cni.network_config(ipam={"type": "vnetdp"}), timeout=20)
    assert call.code == Code.INVALID_CONFIG and "own IPAM" in call.output["msg"]
    assert own_processes() - before < 20


@pytest.mark.parametrize("how", ["symlink", "copy", "wrapper"])
def test_a_delegate_that_calls_back_into_vnetdp_is_refused(lab, pods, how):
    """By its file (a link or a copy of the entry point) or, through a wrapper
    script, by the delegation depth: never a process explosion."""
    extra = tempfile.mkdtemp(prefix="vnd-cni-")
    try:
        plugin = os.path.join(extra, "loop-ipam")
        vnetdp = os.path.join(lab.cni_bin_dir(pods.vm), "vnetdp")
        if how == "symlink":
            os.symlink(vnetdp, plugin)
        elif how == "copy":
            shutil.copy(vnetdp, plugin)
        else:
            with open(plugin, "w") as f:
                f.write(f"#!/bin/sh\nexec {vnetdp}\n")
            os.chmod(plugin, 0o755)
        before, state = own_processes(), state_of(lab, pods.vm)
        ns = pods.netns()
        call = pods.call("ADD", ns, cni.network_config(ipam={"type": "loop-ipam"}), extra_path=(extra,),
                         timeout=60)
        assert call.code == Code.INVALID_CONFIG, call.output
        assert ("vnetdp itself" if how != "wrapper" else "delegate of vnetdp") in call.output["msg"]
        assert own_processes() - before < 20
        assert state_of(lab, pods.vm) == state and not pods.host_link(ns)
    finally:
        shutil.rmtree(extra)


def test_gc_of_one_network_never_touches_another_networks_pods(lab, pods):
    ns_a, a = pods.add(cni.network_config(name="net-a"))
    ns_b, b = pods.add(cni.network_config(name="net-b"))
    session_pod = lab.plan.pod_ns(pods.vm, 1)
    valid = [{"containerID": session_pod, "ifname": "eth0"}]  # net-a: only pods of other networks
    gc = lab.cni(pods.vm, "GC", cni.network_config(name="net-a", **{"cni.dev/valid-attachments": valid}))
    assert gc.ok, gc.output
    assert pods.gone(ns_a, address_of(a))
    assert pods.intact(ns_b, address_of(b)) and pods.record(ns_b).network == "net-b"
    assert probe.ping(ns_b, str(lab.plan.vm(1).primary), count=1).ok


def test_an_add_that_contradicts_the_node_settings_is_refused_and_changes_nothing(lab, pods):
    before = node_map(lab, pods.vm)
    state = state_of(lab, pods.vm)
    for fields in ({"enableSnat": False}, {"snatPorts": [1024, 2047]}, {"vnetCidrs": ["10.0.0.0/8"]},
                   {"localSwitching": False}, {"nicAttach": "xdp"}, {"master": "lo"}):
        ns = pods.netns()
        call = pods.call("ADD", ns, cni.network_config(**fields))
        assert call.code == Code.INVALID_CONFIG, (fields, call.output)
        assert next(iter(fields)) in call.output["msg"] and "node set" in call.output["details"]
        assert not pods.host_link(ns)
    bad_ifname = pods.call("ADD", pods.netns(), cni.network_config(enableSnat=False), ifname="a/b")
    assert bad_ifname.code == Code.INVALID_ENV
    assert node_map(lab, pods.vm) == before and state_of(lab, pods.vm) == state


def test_node_set_changes_the_node_and_configs_that_agree_work(lab, pods, node_set):
    node_set(pods.vm, enableSnat=False)
    entry, _ = node_map(lab, pods.vm)
    assert not entry.flags & 2  # NODE_SNAT
    ns, added = pods.add(cni.network_config(enableSnat=False))
    assert probe.ping(ns, str(P.PEER_IP), count=1).ok
    before = counters(lab, pods.vm)
    in_ns(ns, ["ping", "-c", "1", "-W", "1", "198.18.0.1"], check=False)
    assert (counters(lab, pods.vm) - before)["FWD_UNTRANSLATED"] >= 1


@pytest.mark.parametrize("kind", ["node", "fifo", "file", "directory", "devnull", "proc-self"])
def test_a_netns_that_is_not_a_pods_is_code_4_naming_it_and_allocates_nothing(lab, pods, kind):
    scratch = tempfile.mkdtemp(prefix="vnd-netns-")
    try:
        path = {"node": f"/run/netns/{pods.vm.ns}", "fifo": os.path.join(scratch, "fifo"),
                "file": os.path.join(scratch, "file"), "directory": scratch, "devnull": "/dev/null",
                "proc-self": "/proc/self/ns/net"}[kind]
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "file":
            open(path, "w").close()
        routes, state = default_routes(pods.vm.ns), state_of(lab, pods.vm)
        call = lab.cni(pods.vm, "ADD", cni.network_config(), container_id=f"bad-{kind}", pod_netns=path,
                       timeout=10)
        assert call.code == Code.INVALID_ENV and path in call.output["msg"], call.output
        assert default_routes(pods.vm.ns) == routes and state_of(lab, pods.vm) == state
    finally:
        shutil.rmtree(scratch)


def test_workers_die_with_a_killed_agent(lab):
    vm = lab.plan.vm(1)
    state = tempfile.mkdtemp(prefix="vnd-agent-")
    agent = subprocess.Popen(["ip", "netns", "exec", vm.ns, sys.executable, "-m", "vnetdp.cli", "agent",
                              "--state-dir", state, "--bpffs-dir", lab.node_bpffs_dir(vm)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workers = _children_when(agent.pid, lambda kids: len(kids) >= 8)
        assert len(workers) >= 8
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        assert _gone_when(workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        shutil.rmtree(state)


def _children_when(pid: int, ready, tries: int = 100) -> list[int]:
    kids: list[int] = []
    for _ in range(tries):
        kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                for k in open(f"/proc/{pid}/task/{t}/children").read().split()]
        if ready(kids):
            break
        time.sleep(0.1)
    return kids


def _gone_when(pids: list[int], tries: int = 100) -> bool:
    for _ in range(tries):
        if not any(os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]
                   for p in pids if os.path.exists(f"/proc/{p}")):
            return True
        time.sleep(0.1)
    return False


# --- inputs and errors -------------------------------------------------------------

@pytest.mark.parametrize("fields,code,names", [
    ({"ipam": {"type": "vnetdp-ipam", "refreshSeconds": "abc"}}, Code.INVALID_CONFIG, "refreshSeconds"),
    ({"logFile": "/nonexistent-vnd-dir/vnetdp.log"}, Code.INVALID_CONFIG, "logFile"),
    ({"prevResult": {"ips": [{"address": "not-an-ip"}]}}, Code.INVALID_CONFIG, "prevResult"),
    ({"prevResult": {"ips": "x"}}, Code.INVALID_CONFIG, "prevResult"),
    ({"snatPorts": [True, 65535]}, Code.INVALID_CONFIG, "snatPorts"),
    ({"name": None}, Code.INVALID_CONFIG, "name"),
    ({"type": ""}, Code.INVALID_CONFIG, "type"),
    ({"dns": "8.8.8.8"}, Code.INVALID_CONFIG, "dns"),
    ({"ipam": {"type": "vnetdp-ipam", "url": "file:///etc/passwd"}}, Code.INVALID_CONFIG, "ipam.url"),
], ids=["refresh-type", "logfile-dir", "prev-address", "prev-shape", "ports-bool", "no-name", "no-type",
        "dns-type", "url-scheme"])
def test_bad_config_values_are_code_7_naming_the_field(lab, pods, ipam_dir, fields, code, names):
    conf = {k: v for k, v in {**cni.network_config(), **fields}.items() if v is not None}
    if "ipam" in fields and "refreshSeconds" in fields["ipam"]:
        conf["ipam"]["stateDir"] = ipam_dir  # a fresh pool: it must refresh
    state = state_of(lab, pods.vm)
    ns = pods.netns()
    call = pods.call("ADD", ns, conf)
    assert call.code == code and names in call.output["msg"], call.output
    assert state_of(lab, pods.vm) == state and not pods.host_link(ns)


@pytest.mark.parametrize("ifname", ["a" * 16, "a/b", "a b", "..", ".", "lo", "eth:0"])
def test_bad_ifname_is_code_4_naming_the_rule(lab, pods, ifname):
    state = state_of(lab, pods.vm)
    call = pods.call("ADD", pods.netns(), ifname=ifname)
    assert call.code == Code.INVALID_ENV and "CNI_IFNAME" in call.output["msg"], call.output
    assert state_of(lab, pods.vm) == state


def test_a_read_only_state_directory_is_code_5(lab, pods):
    ro = tempfile.mkdtemp(prefix="vnd-ro-")
    run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "vnd-ro", ro])
    try:
        conf = cni.network_config(stateDir=ro)
        del conf["master"]  # this state directory has no node settings: the node's defaults
        # In-process: the agent runs in the mount namespace "ip netns exec" gave it, which
        # need not see this mount (passing the netns by descriptor is a Kubernetes issue item).
        call = pods.call("ADD", pods.netns(), conf, agent=False)
        assert call.code == Code.IO_FAILURE, call.output
    finally:
        run(["umount", ro])
        shutil.rmtree(ro)


@contextlib.contextmanager
def document_server(vm_ns: str, body: bytes, bytes_per_second: float | None = None) -> Iterator[str]:
    """An interface document server on loopback inside ``vm_ns`` serving ``body``
    (trickled at ``bytes_per_second``); yields its URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                if bytes_per_second:
                    time.sleep(1 / bytes_per_second)
                try:
                    self.wfile.write(body[i:i + 1] if bytes_per_second else body[i:])
                    self.wfile.flush()
                except OSError:
                    return
                if not bytes_per_second:
                    return

        def log_message(self, *args) -> None:
            pass

    with netns.enter(vm_ns):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/doc"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ipam_dir() -> Iterator[str]:
    """A state directory for an IPAM pool of the test's own, removed afterwards."""
    path = tempfile.mkdtemp(prefix="vnd-ipam-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ipam_conf(url: str, state_dir: str, **ipam) -> dict:
    return cni.network_config(ipam={"type": "vnetdp-ipam", "url": url, "stateDir": state_dir, **ipam})


def test_a_garbage_interface_document_is_code_102(lab, pods, ipam_dir):
    state = ipam_dir
    with document_server(pods.vm.ns, b"\xff\xfe\x00garbage\x80") as url:
        call = pods.call("ADD", pods.netns(), ipam_conf(url, state))
    assert call.code == Code.SOURCE_UNAVAILABLE and "Traceback" not in call.output["msg"], call.output


def test_a_document_that_offers_the_nodes_own_address_never_hands_it_out(lab, pods, ipam_dir):
    vm = pods.vm
    doc = json.dumps({"Interfaces": [{"MacAddress": vm.mac.replace(":", ""), "IsPrimary": True, "IPSubnets": [
        {"Prefix": "10.3.0.0/16", "IPAddresses": [{"Address": str(vm.primary), "IsPrimary": False}]}]}]})
    state = ipam_dir
    with document_server(vm.ns, doc.encode()) as url:
        call = pods.call("ADD", pods.netns(), ipam_conf(url, state))
    assert call.code == Code.POOL_EXHAUSTED, call.output
    assert default_routes(vm.ns) and probe.ping(lab.plan.peer, str(vm.primary), count=1).ok


def test_a_slow_document_holds_no_lock_and_times_out(lab, pods, ipam_dir):
    """One ADD must re-read a document sent at 2 bytes/s; an ADD for another pod
    in the same pool (fresh enough for it) finishes while the first waits."""
    state = ipam_dir
    vm = pods.vm
    spare = [ipaddress.IPv4Address(f"10.3.{vm.k}.{200 + i}") for i in range(3)]  # not the lab pool's
    doc = nmagent.interface_document(vm.mac, P.VNET, vm.primary, spare).encode()
    try:
        with document_server(vm.ns, doc) as good:
            first = pods.call("ADD", pods.netns(), ipam_conf(good, state))  # reads the pool
        assert first.ok, first.output
        with document_server(pods.vm.ns, doc, bytes_per_second=2) as slow:
            ns_slow, ns_fast = pods.netns(), pods.netns()
            cmd = [sys.executable, "-c", "import sys, json; from vnetdp.lab import cni; "
                   "c = cni.invoke(*sys.argv[1:4], json.loads(sys.argv[4]), container_id=sys.argv[5], "
                   "pod_netns=sys.argv[6]); print(c.code)"]
            slow_call = subprocess.Popen(
                [*cmd, pods.vm.ns, lab.cni_bin_dir(pods.vm), "ADD",
                 json.dumps(ipam_conf(slow, state, refreshSeconds=0)), ns_slow, netns.path_of(ns_slow)],
                stdout=subprocess.PIPE, text=True)
            time.sleep(1)  # the slow ADD is fetching now
            fast = pods.call("ADD", ns_fast, ipam_conf(slow, state, refreshSeconds=3600))
            assert fast.ok and slow_call.poll() is None, fast.output  # done while the other waits
            out, _ = slow_call.communicate(timeout=30)
        assert out.strip() == str(int(Code.SOURCE_UNAVAILABLE))
    finally:
        for ns in pods.made:
            pods.call("DEL", ns, ipam_conf("http://127.0.0.1:1/unused", state))


def test_concurrent_adds_for_one_attachment_give_one_endpoint(lab, pods):
    ns = pods.netns()
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; from vnetdp.lab import cni; "
                               "c = cni.invoke(sys.argv[1], sys.argv[2], 'ADD', cni.network_config(), "
                               "container_id=sys.argv[3], pod_netns=sys.argv[4]); "
                               "import json; print(json.dumps(c.output))",
                               pods.vm.ns, lab.cni_bin_dir(pods.vm), ns, netns.path_of(ns)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all("code" not in r for r in results), results
    assert len({json.dumps(r, sort_keys=True) for r in results}) == 1
    with netns.enter(ns), IPRoute() as ipr:
        assert len(ipr.link_lookup(ifname="eth0")) == 1
    assert probe.ping(ns, str(lab.plan.vm(1).primary), count=1).ok


def test_an_add_for_an_attachment_in_another_netns_is_refused(lab, pods):
    ns, added = pods.add()
    other = pods.netns()
    call = lab.cni(pods.vm, "ADD", cni.network_config(), container_id=ns, pod_netns=netns.path_of(other))
    assert call.code == Code.INVALID_ENV and "DEL it" in call.output["details"]
    assert probe.ping(ns, str(lab.plan.vm(1).primary), count=1).ok


def test_a_repeated_add_returns_the_intact_endpoint_untouched(lab, pods):
    ns, added = pods.add()
    index = _host_index(pods, ns)
    again = pods.call("ADD", ns)
    assert again.ok and again.output == added.output
    assert _host_index(pods, ns) == index  # the veth was not rebuilt


def test_a_repeated_add_repairs_a_broken_endpoint_with_the_same_macs(lab, pods):
    ns, added = pods.add()
    address = address_of(added)
    with netns.enter(pods.vm.ns), lab.node(pods.vm).maps() as m:
        m.delete_endpoint(address)
    assert pods.call("CHECK", ns).code == Code.CHECK_FAILED
    again = pods.call("ADD", ns)
    assert again.ok and again.output == added.output  # same address, same MACs
    assert pods.call("CHECK", ns).ok
    assert probe.ping(ns, str(lab.plan.vm(1).primary), count=1).ok


def _host_index(pods, ns: str) -> int:
    with netns.enter(pods.vm.ns), IPRoute() as ipr:
        return ipr.link_lookup(ifname=naming.host_ifname(ns, "eth0"))[0]


# --- datapath, end to end ----------------------------------------------------------

@pytest.mark.parametrize("dest,reason,setting", [
    ("169.254.169.254", "DROP_METADATA", "allowMetadata"),
    ("168.63.129.16", "DROP_HOST_AGENT", "allowHostAgent"),
])
def test_cloud_endpoints_are_blocked_for_pods_until_the_node_allows_them(lab, node_set, dest, reason, setting):
    vm = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm, 1)

    def connect() -> None:
        in_ns(pod, [sys.executable, "-c", f"import socket; s = socket.socket(); s.settimeout(0.5)\n"
                    f"try: s.connect(('{dest}', 80))\nexcept OSError: pass"], check=False)

    before = counters(lab, vm)
    connect()
    assert (counters(lab, vm) - before)[reason] >= 1
    node_set(vm, **{setting: True})
    before = counters(lab, vm)
    connect()
    moved = counters(lab, vm) - before
    assert moved[reason] == 0 and moved["FWD_SNAT"] >= 1


def test_martian_destinations_from_a_pod_are_dropped_not_translated(lab):
    vm = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm, 1)
    before = counters(lab, vm)
    for dest in ("127.0.0.1", "224.0.0.5", "255.255.255.255", "0.1.2.3"):
        in_ns(pod, [sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
                    f"s.sendto(b'x', ('{dest}', 9))"], check=False)
    moved = counters(lab, vm) - before
    assert moved["DROP_MARTIAN"] >= 2 and moved["FWD_SNAT"] == 0


def _send(ns: str, ifname: str, frame, times: int = 3) -> None:
    """Raw frames out of ``ifname`` in ``ns`` (the receiving side's kernel
    takes an in-frame VLAN tag out into the skb, as a NIC's offload would)."""
    with netns.enter(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((ifname, 0))
            for _ in range(times):
                s.send(bytes(frame))
        finally:
            s.close()
    time.sleep(0.2)


def test_vlan_tagged_frames_from_a_pod_are_dropped_and_from_the_fabric_reach_the_host(lab):
    vm = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm, 1)
    pod_address = str(lab.pod_address(vm, 1))
    with netns.enter(pod), IPRoute() as ipr:
        pod_mac = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")
    for vlan in (7, 0):  # a VLAN, and a priority tag
        tagged = (Ether(src=pod_mac, dst=P.GATEWAY_MAC) / Dot1Q(vlan=vlan) /
                  IP(src=pod_address, dst=str(P.PEER_IP)) / ICMP())
        before = counters(lab, vm)
        _send(pod, "eth0", tagged)
        moved = counters(lab, vm) - before
        assert moved["DROP_VLAN"] >= 3 and moved["FWD_VNET"] == 0, moved
    before = counters(lab, vm)
    _send(lab.plan.fabric, vm.name,
          Ether(src=P.GATEWAY_MAC, dst=vm.mac) / Dot1Q(vlan=7) / IP(src=str(P.PEER_IP), dst=pod_address) / ICMP())
    moved = counters(lab, vm) - before
    assert moved["PASS_NIC"] >= 3 and moved["FWD_TO_POD"] == 0, moved


def test_a_large_fragmented_reply_reaches_the_pod_whole(lab):
    """An EDNS-sized answer (4000 bytes) leaves the internet host in three
    fragments toward the primary IP; the pod gets the whole datagram."""
    vm = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm, 1)
    server, client = ns_socket(lab.plan.inet, socket.SOCK_DGRAM), ns_socket(pod, socket.SOCK_DGRAM)
    before = counters(lab, vm)
    with server, client:
        server.bind((str(P.INET_IP), 5353))
        server.settimeout(3)
        client.settimeout(3)
        client.sendto(b"query", (str(P.INET_IP), 5353))
        _, asker = server.recvfrom(100)
        answer = bytes(i % 251 for i in range(4000))
        server.sendto(answer, asker)
        assert client.recvfrom(8192)[0] == answer
    assert (counters(lab, vm) - before)["FWD_SNAT_FRAGMENT"] >= 2


def test_status_is_not_ready_when_pods_cannot_be_attached(lab, pods):
    """The node's NIC gone (here: its setting names one that is not there)."""
    assert lab.cni(pods.vm, "STATUS").ok
    settings_file = NodeSettingsFile(lab.plan.state_dir(pods.vm))
    before = open(settings_file.path).read()
    try:
        settings_file.update({"master": "vnd-no-nic"})
        status = lab.cni(pods.vm, "STATUS")
    finally:
        atomic_write(settings_file.path, before)
    assert status.code == Code.NOT_AVAILABLE and "vnd-no-nic" in status.output["msg"], status.output
    assert lab.cni(pods.vm, "STATUS").ok


def test_node_set_that_the_node_cannot_take_changes_nothing(lab, pods):
    vm = pods.vm
    settings_file = NodeSettingsFile(lab.plan.state_dir(vm))
    before, node_entry = open(settings_file.path).read(), node_map(lab, vm)
    out = in_ns(vm.ns, [sys.executable, "-m", "vnetdp.cli", "node", "set", 'master="vnd-no-nic"',
                        "--state-dir", lab.plan.state_dir(vm), "--bpffs-dir", lab.node_bpffs_dir(vm)], check=False)
    assert out.returncode == 1 and "nothing changed" in out.stderr and "vnd-no-nic" in out.stderr, out.stderr
    assert open(settings_file.path).read() == before and node_map(lab, vm) == node_entry
