"""Durable file replacement (vnetdp.files.atomic_write): the new content whole
or the old file untouched, the mode asked for, no temp file left behind."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from vnetdp import files


@pytest.fixture
def old(tmp_path) -> str:
    path = str(tmp_path / "state.json")
    files.atomic_write(path, "old content, longer than the new one\n")
    return path


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_content_is_replaced_whole(old):
    files.atomic_write(old, "new")
    assert open(old).read() == "new"
    files.atomic_write(old, b"\x00\xffbytes")
    assert open(old, "rb").read() == b"\x00\xffbytes"
    assert os.listdir(os.path.dirname(old)) == ["state.json"]  # no temp file left


def test_large_content_is_written_whole(tmp_path):
    data = os.urandom(1 << 20) * 3
    files.atomic_write(str(tmp_path / "big"), data)
    assert (tmp_path / "big").read_bytes() == data


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_applied_whatever_the_umask_and_the_old_mode(old, mode):
    os.chmod(old, 0o666)
    umask = os.umask(0o077)
    try:
        files.atomic_write(old, "x", mode)
        files.atomic_write(old + ".new", "x", mode)
    finally:
        os.umask(umask)
    assert mode_of(old) == mode == mode_of(old + ".new")


def test_default_mode_is_0644(tmp_path):
    files.atomic_write(str(tmp_path / "f"), "x")
    assert mode_of(str(tmp_path / "f")) == 0o644


def fail_after_half(real_write):
    """An os.write that writes part of the data, then finds the disk full."""
    calls = []

    def write(fd, data):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(fd)
        return real_write(fd, bytes(data[:len(data) // 2]))
    return write


def raise_(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("name,make", [
    ("write", fail_after_half),                                          # disk full mid-way
    ("fsync", lambda real: raise_(OSError(errno.EIO, "I/O error"))),
    ("fsync", lambda real: raise_(KeyboardInterrupt())),                 # not only OSError
    ("replace", lambda real: raise_(OSError(errno.EXDEV, "rename failed"))),
])
def test_a_failed_write_leaves_the_old_file_and_no_temp(old, monkeypatch, name, make):
    before = open(old).read()
    monkeypatch.setattr(files.os, name, make(getattr(os, name)))
    with pytest.raises(BaseException) as e:
        files.atomic_write(old, "new content " * 1000)
    monkeypatch.undo()
    assert isinstance(e.value, (OSError, KeyboardInterrupt))
    assert open(old).read() == before
    assert os.listdir(os.path.dirname(old)) == ["state.json"]


def test_a_write_into_a_missing_directory_fails_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.atomic_write(str(tmp_path / "missing" / "f"), "x")
    assert os.listdir(tmp_path) == []


def test_fsync_dir_needs_a_directory(tmp_path):
    files.fsync_dir(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        files.fsync_dir(str(tmp_path / "f"))


def test_only_what_outlives_a_reboot_is_flushed(tmp_path, monkeypatch):
    """The IPAM store's writes reach the disk (file and directory); a pod
    record, which describes a veth and a netns, is replaced whole by a
    rename without either flush: two fewer fsync pairs per ADD."""
    from vnetdp.ipam.store import Allocation, Store
    from vnetdp.network.records import PodRecord, PodRecords

    flushed: list[int] = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (flushed.append(fd), real(fd)))
    PodRecords(str(tmp_path)).save(PodRecord("c1", "eth0", "/run/netns/p1", "10.3.1.2", "vnetdp-ipam"))
    assert flushed == [] and PodRecords(str(tmp_path)).get("c1", "eth0").address == "10.3.1.2"
    assert not [n for n in os.listdir(tmp_path / "attachments") if ".tmp-" in n]
    with Store(str(tmp_path)).transaction() as state:
        state.allocations.append(Allocation("c1", "eth0", "10.3.1.2", "10.3.0.0/16", "10.3.0.1", 0.0))
    assert len(flushed) == 4  # the state file and the lease file, each with its directory
