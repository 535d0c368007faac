"""Durable file replacement: the one way vnetdp writes a file that must
survive a crash whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: str | bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, fsync, rename,
    fsync of the directory. A crash leaves the old file or the new one.
    ``sync=False`` for what describes state a reboot ends (pods' veths and
    namespaces): the rename still makes it whole or absent to any process,
    which is all a crash of the writer needs, without the two disk flushes."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp-{os.getpid()}"
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(directory)


def json_files(directory: str, wanted: Callable[[str], bool]) -> Iterator[dict]:
    """The JSON objects in ``directory``'s files whose names are ``wanted``;
    files that vanish or do not hold an object are skipped."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in filter(wanted, names):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(directory, name)) as f:
                data = json.load(f)
            if isinstance(data, dict):
                yield data


def json_records(directory: str, record: Callable[..., T], wanted: Callable[[str], bool] = lambda name:
                 name.endswith(".json")) -> list[T]:
    """``record(**object)`` for each JSON object in ``directory``'s ``wanted``
    files; objects that do not fit ``record`` are skipped."""
    found = []
    for data in json_files(directory, wanted):
        with contextlib.suppress(TypeError):
            found.append(record(**data))
    return found
