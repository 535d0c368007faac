"""Where ``vnetdp install`` and the agent mount a bpffs when the pin directory
is on none, and the build markers kept beside the pinned builds. Nothing is
mounted here: the plan is a pure function of the directories, and the
markers are symlinks, which a tmpfs holds as a bpffs does."""
from __future__ import annotations

import pytest

from vnetdp.datapath import bpffs
from vnetdp.datapath.bpffs import CURRENT, PREVIOUS, Bpffs, MountPlan, MountRefused, plan_mount


def test_an_empty_directory_in_the_path_gets_the_mount(tmp_path):
    """/sys/fs/bpf exists, empty and unmounted: the bpffs goes there, not at /sys/fs/bpf/vnetdp."""
    (tmp_path / "bpf").mkdir()
    assert plan_mount(str(tmp_path / "bpf" / "vnetdp")) == MountPlan(str(tmp_path / "bpf"))


def test_an_existing_empty_pin_directory_gets_the_mount_itself(tmp_path):
    (tmp_path / "pins").mkdir()
    (tmp_path / "other").mkdir()  # the parent is not empty: the pin directory is the nearest empty one
    assert plan_mount(str(tmp_path / "pins")) == MountPlan(str(tmp_path / "pins"))


def test_a_missing_path_under_a_busy_directory_is_created_from_its_top(tmp_path):
    (tmp_path / "files").write_text("x")
    plan = plan_mount(str(tmp_path / "run" / "bpf" / "vnetdp"))
    assert plan == MountPlan(str(tmp_path / "run"), (str(tmp_path / "run"),))


def test_a_pin_directory_with_files_that_is_no_bpffs_is_never_mounted_over(tmp_path):
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "somebody's file").write_text("x")
    with pytest.raises(MountRefused, match="holds files"):
        plan_mount(str(pins))
    with pytest.raises(MountRefused, match="not a directory"):
        plan_mount(str(pins / "somebody's file" / "vnetdp"))


def test_a_pin_directory_on_a_bpffs_needs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(bpffs, "is_bpffs", lambda path: path == str(tmp_path))
    (tmp_path / "x").write_text("")  # a bpffs with pins in it: the usual case
    assert plan_mount(str(tmp_path / "vnetdp")) == MountPlan(None)
    assert bpffs.ensure_mounted(str(tmp_path / "vnetdp")) is None


def test_ensure_mounted_creates_the_mount_point_and_mounts_there(tmp_path, monkeypatch):
    (tmp_path / "busy").write_text("x")
    mounted = []
    monkeypatch.setattr(bpffs, "mount", mounted.append)
    assert bpffs.ensure_mounted(str(tmp_path / "bpf" / "vnetdp")) == str(tmp_path / "bpf")
    assert mounted == [str(tmp_path / "bpf")] and (tmp_path / "bpf").is_dir()


def test_markers_name_builds_and_are_not_builds(tmp_path):
    b = Bpffs(str(tmp_path))
    for build in ("aaa", "bbb"):
        (tmp_path / "progs" / build).mkdir(parents=True)
    assert b.marker(CURRENT) is None and b.marker(PREVIOUS) is None
    b.set_marker(CURRENT, "aaa")
    b.set_marker(PREVIOUS, "bbb")
    assert (b.marker(CURRENT), b.marker(PREVIOUS)) == ("aaa", "bbb")
    b.set_marker(CURRENT, "bbb")  # renamed over the old one
    assert b.marker(CURRENT) == "bbb"
    assert b.builds() == ["aaa", "bbb"]
    b.set_marker(PREVIOUS, None)
    assert b.marker(PREVIOUS) is None and sorted(p.name for p in (tmp_path / "progs").iterdir()) == \
        ["aaa", "bbb", "current"]
