"""`vnetdp monitor` against the session's lab (VM 2), run from the host with
--netns as an operator would: a frame with a foreign source address sent
from a pod (an AF_PACKET socket in its namespace) shows within a second as
a DROP_SPOOF_IP event naming the pod; --pod keeps one pod's events; --trace
shows forwarded packets; the switch is off again after the monitor ends
(--count, SIGTERM); a second monitor is refused while one runs."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vnetdp import naming, netns
from vnetdp.datapath.maps import Maps
from vnetdp.lab import plan as P
from vnetdp.lab.shell import in_ns

SPOOFED = "10.3.250.250"    # in the VNet, nobody's


def monitor(lab, vm, *args: str) -> subprocess.Popen:
    """`vnetdp monitor ARGS` for ``vm``, from the host (--netns), running."""
    argv = [sys.executable, "-m", "vnetdp.cli", "monitor", *args, "--state-dir", lab.plan.state_dir(vm),
            "--bpffs-dir", lab.node_bpffs_dir(vm), "--netns", vm.ns]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def switch(lab, vm) -> int:
    with Maps(os.path.join(lab.node_bpffs_dir(vm), "maps")) as m:
        return m.monitor().flags


def wait_switched_on(lab, vm, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while switch(lab, vm) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the monitor never switched events on"
        time.sleep(0.05)


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The monitor's next line, None when none comes within ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else None


def send_spoofed(pod_ns: str) -> None:
    """A UDP datagram from ``pod_ns``'s eth0 with its own MAC and a foreign source address."""
    with netns.enter(pod_ns):
        with IPRoute() as ipr:
            mac = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind(("eth0", 0))
            s.send(bytes(Ether(src=mac, dst=P.GATEWAY_MAC) / IP(src=SPOOFED, dst=str(P.PEER_IP)) /
                         UDP(sport=4242, dport=53)))
        finally:
            s.close()


@pytest.fixture
def stop():
    """stop(proc): end a monitor as a service manager would (SIGTERM), and
    make sure none outlives its test."""
    procs = []

    def _stop(proc: subprocess.Popen) -> tuple[int, str, str]:
        procs.append(proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        return proc.returncode, out, err

    yield _stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_spoofed_frame_from_a_pod_shows_as_its_drop_within_a_second(lab, stop):
    vm = lab.plan.vm(2)
    pod = lab.plan.pod_ns(vm, 1)
    proc = monitor(lab, vm, "--json", "--count", "1")
    try:
        wait_switched_on(lab, vm, proc)
        sent = time.time()
        send_spoofed(pod)
        line = read_line(proc, 1.0)
        shown = time.time()
        if line:
            proc.wait(timeout=10)  # one event asked for: it ends by itself
    finally:
        rc, _, err = stop(proc)
    assert line, f"no event within a second: {err}"
    assert rc == 0, err
    e = json.loads(line)
    assert (e["hook"], e["direction"], e["reason"], e["drop"]) == ("from_container", "from-pod", "DROP_SPOOF_IP", True)
    assert (e["kind"], e["container_id"], e["interface"]) == ("pod", pod, naming.host_ifname(pod, "eth0"))
    assert (e["protocol"], e["saddr"], e["sport"], e["daddr"], e["dport"]) == ("udp", SPOOFED, 4242,
                                                                               str(P.PEER_IP), 53)
    assert sent - 1 < e["time"] < shown + 0.1 and shown - sent < 1.0
    assert switch(lab, vm) == 0


def test_a_named_pods_drop_carries_its_name_and_the_pod_filter_keeps_only_it(lab, pods, stop):
    vm = lab.plan.vm(2)
    named, _ = pods.add(args="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=spoofer")
    proc = monitor(lab, vm, "--pod", "shop/spoofer", "--reason", "DROP_SPOOF_IP", "--json", "--count", "1")
    try:
        wait_switched_on(lab, vm, proc)
        send_spoofed(lab.plan.pod_ns(vm, 1))   # another pod's drop: filtered out
        send_spoofed(named)
        line = read_line(proc, 2.0)
        if line:
            proc.wait(timeout=10)
    finally:
        rc, _, err = stop(proc)
    assert line, err
    e = json.loads(line)
    assert (e["namespace"], e["pod"], e["container_id"], e["reason"]) == ("shop", "spoofer", named, "DROP_SPOOF_IP")
    assert rc == 0 and switch(lab, vm) == 0


def test_trace_shows_a_pods_forwarded_packets_and_sigterm_switches_events_off(lab, stop):
    vm = lab.plan.vm(2)
    pod, address = lab.plan.pod_ns(vm, 1), str(lab.pod_address(vm, 1))
    proc = monitor(lab, vm, "--trace", "--pod", address)
    try:
        wait_switched_on(lab, vm, proc)
        in_ns(pod, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", str(P.PEER_IP)], timeout=30)
        time.sleep(0.5)
    finally:
        rc, out, err = stop(proc)
    assert rc == 0, err
    lines = out.splitlines()
    assert sum("from_container" in x and "FWD_VNET" in x and f"icmp {address} -> {P.PEER_IP} (type 8 code 0)" in x
               for x in lines) >= 3, out
    assert sum("from_nic" in x and "FWD_TO_POD" in x and f"icmp {P.PEER_IP} -> {address} (type 0 code 0)" in x
               for x in lines) >= 3, out
    assert switch(lab, vm) == 0


def test_a_second_monitor_is_refused_while_one_runs(lab, stop):
    vm = lab.plan.vm(2)
    first = monitor(lab, vm, "--trace")
    try:
        wait_switched_on(lab, vm, first)
        second = monitor(lab, vm, "--seconds", "1")
        _, err = second.communicate(timeout=20)  # refused at once, or done after its second
        rc = second.returncode
        assert rc == 1 and "another vnetdp monitor" in err, err
        assert switch(lab, vm) != 0  # the first one's switch stays
    finally:
        stop(first)
    assert switch(lab, vm) == 0
