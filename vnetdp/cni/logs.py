"""What a plugin process writes about itself (SPEC §10): JSON lines, rotated by
size, and one record per call with its duration and phases.

Log file: the config's ``logFile``, else ``<log dir>/<plugin>.log`` with the
log directory ``VNETDP_LOG_DIR`` or ``/var/log`` (``vnetdp.log``,
``vnetdp-ipam.log``). A default file that cannot be written falls back to
stderr: logging never fails a call (an explicit ``logFile`` that cannot be
opened is the caller's error, code 7, raised as ``OSError`` here).

Call spool: every ADD/DEL/CHECK/GC also appends its record (no message) to
``<state dir>/cni-calls.jsonl``, which ``vnetdp metrics`` reads to build its
latency histograms and error counts: plugin processes do not live long
enough to be scraped. One JSON object a line::

    {"time": 1700000000.5, "plugin": "vnetdp", "command": "ADD", "container_id": "...",
     "ifname": "eth0", "pod": "default/web-0", "result": "ok", "code": 0,
     "duration_s": 0.0412, "phases": {"ipam": 0.0031, "endpoint": 0.0307, "total": 0.0412}}

Both files are appended to by many processes at once and rotated by size
(``<file>.1`` the newest backup). Each append takes an ``flock`` on the file
itself: whoever fills it renames the chain under that lock, and a process
that finds its file renamed away appends to the new one, so no line is lost
or split and each rotation happens once. Phases are timed with ``phase``,
a no-op outside a call. Standard library only: the protocol layer imports it.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

LOG_DIR_VAR = "VNETDP_LOG_DIR"
DEFAULT_LOG_DIR = "/var/log"
LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 5
SPOOL_FILE = "cni-calls.jsonl"
SPOOL_MAX_BYTES = 4 << 20   # ~12000 calls; `vnetdp metrics` reads it every scrape
SPOOL_BACKUPS = 1
#: The commands that log and spool one record each (STATUS and VERSION are polled).
RECORDED = ("ADD", "DEL", "CHECK", "GC")
_MODE = 0o640


# --- appending to a file many processes share ---------------------------------------------
def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _rotate(path: str, backups: int) -> None:
    for i in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def append_rotating(path: str, data: bytes, max_bytes: int, backups: int) -> None:
    """Append ``data`` to ``path`` in one write under an flock of the file;
    a file that ``data`` would take past ``max_bytes`` is rotated first
    (keeping ``backups``), so files stay within it (but for one longer line)."""
    for _ in range(10):  # each retry: a rotation (ours or another's) since our open
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, path):
                continue
            size = os.fstat(fd).st_size
            if backups > 0 and size and size + len(data) > max_bytes:
                _rotate(path, backups)
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            return
        finally:
            os.close(fd)  # releases the lock
    raise OSError(f"{path} kept being rotated away")


def rotated_files(path: str, backups: int) -> list[str]:
    """``path`` and its backups, newest first."""
    return [path, *(f"{path}.{i}" for i in range(1, backups + 1))]


# --- logging --------------------------------------------------------------------------------
def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, plugin, pid, logger, msg, the
    record's ``fields`` (``extra={"fields": {...}}``) and any traceback."""

    def __init__(self, plugin: str) -> None:
        super().__init__()
        self.plugin = plugin

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _iso(record.created), "level": record.levelname.lower(), "plugin": self.plugin,
               "pid": record.process, "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class SharedFileHandler(logging.Handler):
    """A log file that many short-lived processes append to, rotated by size
    (``append_rotating``; logging's RotatingFileHandler assumes it is the
    file's only writer). Opening checks the file can be written."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        super().__init__()
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE))
        self.path, self.max_bytes, self.backups = path, max_bytes, backups

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append_rotating(self.path, (self.format(record) + "\n").encode(), self.max_bytes, self.backups)
        except Exception:
            self.handleError(record)


def log_dir() -> str:
    return os.environ.get(LOG_DIR_VAR) or DEFAULT_LOG_DIR


def default_log_file(plugin: str) -> str:
    return os.path.join(log_dir(), f"{os.path.basename(plugin)}.log")


def handler(conf: Mapping, plugin: str) -> tuple[logging.Handler, str | None]:
    """The handler for this call and, when the default file could not be
    used, why (it then logs to stderr). An explicit ``logFile`` that cannot
    be opened raises (OSError, TypeError, ValueError)."""
    explicit = conf.get("logFile")
    if explicit:
        if not isinstance(explicit, str):
            raise TypeError(f"logFile must be a string, not {type(explicit).__name__}")
        chosen: logging.Handler = SharedFileHandler(explicit)
        problem = None
    else:
        try:
            chosen, problem = SharedFileHandler(default_log_file(plugin)), None
        except OSError as e:
            chosen, problem = logging.StreamHandler(sys.stderr), f"cannot write {default_log_file(plugin)}: {e}"
    chosen.setFormatter(JsonFormatter(plugin))
    return chosen, problem


# --- one call: its phases and its record --------------------------------------------------
@dataclass
class Call:
    """One plugin call being timed; ``phases`` in seconds, summed when a
    phase runs more than once (IPAM's ADD and its release on a rollback)."""

    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)

    def record(self, plugin: str, environ: Mapping[str, str], code: int) -> dict:
        """The call's record: who (container, ifname, pod), what, how it ended, how long."""
        total = time.perf_counter() - self.started
        args = dict(item.split("=", 1) for item in environ.get("CNI_ARGS", "").split(";") if "=" in item)
        namespace, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
        return {"time": round(self.wall, 3), "plugin": os.path.basename(plugin),
                "command": environ.get("CNI_COMMAND", ""), "container_id": environ.get("CNI_CONTAINERID", ""),
                "ifname": environ.get("CNI_IFNAME", ""), "pod": f"{namespace}/{pod}" if pod else "",
                "result": "error" if code else "ok", "code": code, "duration_s": round(total, 6),
                "phases": {**{k: round(v, 6) for k, v in self.phases.items()}, "total": round(total, 6)}}


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("vnetdp_cni_call", default=None)


@contextlib.contextmanager
def timed_call() -> Iterator[Call]:
    """Time the phases run in the block as one call's."""
    call = Call()
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name`` of the current call (none: untimed)."""
    call = _CALL.get()
    start = time.perf_counter()
    try:
        yield
    finally:
        if call is not None:
            call.phases[name] = call.phases.get(name, 0.0) + time.perf_counter() - start


# --- the call spool -------------------------------------------------------------------------
class CallSpool:
    """``<state dir>/cni-calls.jsonl``: one record per call, for ``vnetdp metrics``."""

    def __init__(self, state_dir: str, max_bytes: int = SPOOL_MAX_BYTES, backups: int = SPOOL_BACKUPS) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, SPOOL_FILE)
        self.max_bytes, self.backups = max_bytes, backups

    def append(self, record: dict) -> bool:
        """Add one record; False when it could not be written (no state
        directory yet, read-only, full): the call goes on regardless."""
        if not os.path.isdir(self.dir):
            return False
        try:
            append_rotating(self.path, (json.dumps(record, separators=(",", ":")) + "\n").encode(),
                            self.max_bytes, self.backups)
        except OSError:
            return False
        return True

    def files(self) -> list[str]:
        """The spool and the backups there are (whoever wrote them), newest first."""
        prefix = SPOOL_FILE + "."
        try:
            numbers = sorted(int(n[len(prefix):]) for n in os.listdir(self.dir)
                             if n.startswith(prefix) and n[len(prefix):].isdigit())
        except FileNotFoundError:
            numbers = []
        return [self.path, *(f"{self.path}.{i}" for i in numbers)]


class SpoolReader:
    """The records appended to a spool since the last ``read``, across
    rotations: it remembers the file it stopped in (device, inode and first
    bytes, as an inode number may be reused) and the offset, and when that
    file has been rotated to a backup, finishes it before the newer ones.
    The first read returns every record the files hold."""

    HEAD = 64  # bytes that tell a file from a later one given the same inode

    def __init__(self, spool: CallSpool) -> None:
        self.spool = spool
        self.file: tuple[int, int, bytes] | None = None
        self.offset = 0

    def _is_tracked(self, ident: tuple[int, int], f) -> bool:
        if self.file is None or ident != self.file[:2]:
            return False
        head = self.file[2]
        f.seek(0)
        return f.read(len(head)) == head and os.fstat(f.fileno()).st_size >= self.offset

    def read(self) -> list[dict]:
        opened: list[tuple[tuple[int, int], object]] = []
        data = []
        try:
            for path in self.spool.files():  # newest first; a rotation meanwhile shows a file twice
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    continue
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if any(ident == seen for seen, _ in opened):
                    f.close()
                    continue
                opened.append((ident, f))
            chain = list(reversed(opened))  # oldest first
            start = next((i for i, (ident, f) in enumerate(chain) if self._is_tracked(ident, f)), None)
            for i, (ident, f) in enumerate(chain):
                if start is not None and i < start:
                    continue
                offset = self.offset if i == start else 0
                f.seek(offset)
                chunk = f.read()
                if i == len(chain) - 1:  # the newest may end in a line being written
                    chunk = chunk[:chunk.rfind(b"\n") + 1]
                    f.seek(0)
                    self.file, self.offset = (*ident, f.read(self.HEAD)), offset + len(chunk)
                data.append(chunk)
        finally:
            for _, f in opened:
                f.close()
        records = []
        for line in b"".join(data).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records
