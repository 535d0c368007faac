"""The ``profile`` option: where the sender's CPU goes in a flood, per
topology. perf records the client's CPU (all its work, softirq included)
during one flood; the kernel symbols with the most samples are kept. It only
reads: no sysctl or other setting is changed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile

from bench import metrics
from bench.topologies import Endpoints
from vnetdp.lab.shell import run

_KERNEL_SYMBOL = re.compile(r"^\s*([\d.]+)%\s+\[k\]\s+(\S+)", re.M)


def kernel_symbols(e: Endpoints, seconds: float, count: int = 12) -> dict:
    """The flood's rate and the ``count`` kernel symbols with the most samples on the client CPU."""
    with tempfile.TemporaryDirectory(prefix="vnetdp-bench-perf-") as tmp:
        data = os.path.join(tmp, "perf.data")
        recorder = subprocess.Popen(["perf", "record", "-q", "-C", str(metrics.CLIENT_CPU), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sample = metrics.measure("flood", e, seconds)
        finally:
            recorder.send_signal(signal.SIGINT)  # perf writes its data and exits
            recorder.wait(timeout=60)
        report = run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym", "-q"],
                     timeout=300).stdout
    symbols = [{"symbol": name, "percent": float(share)} for share, name in _KERNEL_SYMBOL.findall(report)]
    return {"packets_per_s": sample.value, "symbols": symbols[:count]}
