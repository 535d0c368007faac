"""File locks (flock) that order processes on one node."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

POLL_S = 0.005
WAIT_S = 60.0  # how long the plugins and operations wait for a node lock


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller would wait."""


@contextlib.contextmanager
def flocked(path: str, exclusive: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold a lock on ``path`` (created if needed) for the ``with`` body;
    with ``timeout``, give up (LockTimeout) after that many seconds."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(path, "a") as f:
        if timeout is None:
            fcntl.flock(f, mode)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{path} stayed locked for {timeout:g} s") from None
                    time.sleep(POLL_S)
        yield
