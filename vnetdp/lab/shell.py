"""Running commands for the lab, in its namespaces."""
from __future__ import annotations

import subprocess


class CommandFailed(Exception):
    def __init__(self, argv: list[str], proc: subprocess.CompletedProcess) -> None:
        super().__init__(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        self.proc = proc


def run(argv: list[str], check: bool = True, timeout: float = 60,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc)
    return proc


def in_ns(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` inside network namespace ``ns``."""
    return run(["ip", "netns", "exec", ns, *argv], **kw)


def ip_batch(ns: str | None, lines: list[str]) -> None:
    """Apply many ``ip`` commands in one process (``ip -batch``)."""
    if lines:
        run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], stdin="\n".join(lines) + "\n")
