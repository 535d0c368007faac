"""The bench's CNI phases (bench.cni_latency): read from the plugin's own call
spool, only what the measured calls appended, only their pods, successful
calls only."""
from __future__ import annotations

from bench import cni_latency
from vnetdp.cni import logs


def record(pod: str, command: str = "ADD", result: str = "ok", **phases: float) -> dict:
    return {"plugin": "vnetdp", "command": command, "container_id": pod, "result": result,
            "phases": {**phases, "total": sum(phases.values())}}


def test_phases_come_from_the_calls_appended_for_the_measured_pods(tmp_path):
    spool = logs.CallSpool(str(tmp_path))
    spool.append(record("p0", ipam=9.0))                    # before the run
    reader = logs.SpoolReader(spool)
    reader.read()
    spool.append(record("p0", ipam=0.002, node=0.001, veth=0.003, addresses=0.001, attach=0.002))
    spool.append(record("p1", ipam=0.004, node=0.001, veth=0.002, addresses=0.001, attach=0.001))
    spool.append(record("p0", "DEL", endpoint=0.004, ipam=0.001))
    spool.append(record("p1", result="error", ipam=1.0))   # a failed call
    spool.append(record("other", ipam=1.0))                # another pod's
    phases = cni_latency._phases(reader.read(), {"p0", "p1"})
    assert phases["ADD"]["ipam"] == [0.002, 0.004] and len(phases["ADD"]["total"]) == 2
    assert set(phases["ADD"]) == set(cni_latency.PHASES)
    assert phases["DEL"] == {"endpoint": [0.004], "ipam": [0.001], "total": [0.005]}
