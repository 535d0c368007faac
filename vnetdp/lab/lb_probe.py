"""The internal load balancer's health probe (``fabric_lb``): a process the
lab starts in the fabric namespace, ``python -m vnetdp.lab.lb_probe --id LAB``.

Each turn it reads the applied load balancer, probes every backend whose
probe is due (a TCP connection to the probe port from the fabric's gateway
address, given the probe's interval but at most 1 s to open), and rewrites
the fabric's table and the recorded health whenever a backend goes out or
comes back. It ends by itself when no load balancer is applied any more
(``fabric_lb.delete`` stops it first).
"""
from __future__ import annotations

import argparse
import socket
import time

from vnetdp.lab import fabric_lb
from vnetdp.lab import plan as P

CONNECT_TIMEOUT_S = 1.0
TURN_S = 1.0   # the longest sleep: a new load balancer is read within it


def answers(address: fabric_lb.IPv4, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``address:port`` opens within ``timeout``."""
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((str(P.GATEWAY), 0))
        try:
            s.connect((str(address), port))
            return True
        except OSError:
            return False


def run(plan: P.Plan) -> None:
    failures: dict[tuple[fabric_lb.IPv4, int], int] = {}   # failed probes in a row
    due: dict[tuple[fabric_lb.IPv4, int], float] = {}
    enforced = None
    while (lb := fabric_lb.applied(plan)) is not None:
        targets = lb.targets()
        for target, probe in targets.items():
            if due.get(target, 0.0) <= time.monotonic():
                due[target] = time.monotonic() + probe.interval_s
                ok = answers(*target, min(probe.interval_s, CONNECT_TIMEOUT_S))
                failures[target] = 0 if ok else failures.get(target, 0) + 1
        health = {t: failures.get(t, 0) < p.threshold for t, p in targets.items()}
        if (lb, health) != enforced:
            fabric_lb.enforce(plan, lb, health)
            fabric_lb.record_health(plan, health)
            enforced = (lb, health)
        next_due = min((due[t] for t in targets), default=time.monotonic() + TURN_S)
        time.sleep(min(max(next_due - time.monotonic(), 0.01), TURN_S))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vnetdp.lab.lb_probe", description=__doc__)
    parser.add_argument("--id", default="", help="the lab's id")
    run(P.Plan(parser.parse_args(argv).id))


if __name__ == "__main__":
    main()
