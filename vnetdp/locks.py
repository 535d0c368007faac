"""File locks (flock) that order processes on one node."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def flocked(path: str, exclusive: bool = True) -> Iterator[None]:
    """Hold a lock on ``path`` (created if needed) for the ``with`` body."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
