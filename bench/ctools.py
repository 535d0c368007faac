"""The harness's own traffic tools, C sources in ``bench/tools/``: built with gcc
(from the set-up's APT packages) at the start of a run into a temporary
directory, removed when the process exits; run inside lab namespaces, each
reporting one JSON line.

Clients (``udpflood``, ``connrate``) run for a fixed time and report; servers
(``udpsink``, ``connsink``) print ``ready`` once listening and report when
stopped (SIGTERM)."""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from vnetdp.lab.shell import in_ns, run

SOURCES = Path(__file__).with_name("tools")
CFLAGS = ("-Wall", "-Wextra", "-O2")


class ToolFailed(Exception):
    pass


@functools.cache
def build() -> str:
    """Compile every tool, once per process; the directory holding them."""
    out = tempfile.mkdtemp(prefix="vnetdp-bench-tools-")
    atexit.register(shutil.rmtree, out, True)
    for src in sorted(SOURCES.glob("*.c")):
        run(["gcc", *CFLAGS, "-o", os.path.join(out, src.stem), str(src)])
    return out


def path(name: str) -> str:
    return os.path.join(build(), name)


def _report(name: str, ns: str, proc_out: str, proc_err: str) -> dict:
    try:
        return json.loads(proc_out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ToolFailed(f"{name} in {ns} reported nothing: {proc_err.strip()[-300:]}") from None


def run_client(ns: str, name: str, args: list[str], seconds: float) -> dict:
    """Run a client tool in ``ns`` to its end; its report."""
    proc = in_ns(ns, [path(name), *args], check=False, timeout=seconds + 30)
    if proc.returncode != 0:
        raise ToolFailed(f"{name} in {ns} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return _report(name, ns, proc.stdout, proc.stderr)


class Server:
    """A server tool in ``ns`` for a ``with`` block: entered once it listens,
    ``report()`` stops it and returns its report; killed if still running."""

    def __init__(self, ns: str, name: str, args: list[str]) -> None:
        self.ns, self.name = ns, name
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, path(name), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise ToolFailed(f"{self.name} in {self.ns} did not start: {self.proc.communicate()[1].strip()[-300:]}")
        return self

    def report(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)  # ip netns exec execs the tool: this is its PID
        out, err = self.proc.communicate(timeout=10)
        return _report(self.name, self.ns, out, err)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
