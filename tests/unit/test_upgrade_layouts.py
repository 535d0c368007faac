"""Upgrades without a live node: map layout versions (from maps.h through cffi,
and from BTF as the kernel keeps it with each map), the current-build marker
that the loader follows, and the command's argument and report shapes."""
from __future__ import annotations

import re
import struct

import pytest

from vnetdp import cli
from vnetdp.datapath import layout_version as LV
from vnetdp.datapath import layouts, loader
from vnetdp.datapath.bpffs import CURRENT, PREVIOUS, Bpffs
from vnetdp.datapath.loader import PROGRAMS, CompileError, IncompatibleLayout, Programs
from vnetdp.ops import upgrade


# --- layout versions -------------------------------------------------------------------

def test_the_pinned_maps_declared_in_maps_h_follow_its_ifdefs():
    text = layouts.MAPS_H.read_text()
    plain = LV.declared_maps(text)
    assert {"endpoints", "node", "vnet_cidrs", "metrics", "snat", "snat_quota", "snat_frags",
            "host_flows"} <= plain.keys()
    assert plain["endpoints"] == ("__be32", "struct vnd_endpoint")
    assert "trace" not in plain
    assert LV.declared_maps(text, ("-DVND_TEST_TRACE", "-DVND_MAX_SNAT=64"))["trace"] == \
        ("__u32", "struct vnd_redirect_trace")


def test_a_build_layout_is_shapes_and_its_version_a_stable_hash():
    lay = LV.build_layouts()
    key, value = lay["endpoints"]
    assert key == ["int", 4]
    assert value[0] == "struct" and value[1] == 20
    assert [m[0] for m in value[2]] == ["ifindex", "pod_mac", "host_mac", "flags"]
    assert value[2][1] == ["pod_mac", 32, 0, ["array", 6, ["int", 1]]]
    v = LV.version(lay)
    assert re.fullmatch(r"[0-9a-f]{12}", v) and v == LV.version(LV.build_layouts())
    assert LV.version({}) == "none"


def test_a_changed_struct_changes_the_version_comments_do_not(tmp_path):
    text = layouts.MAPS_H.read_text()
    commented = tmp_path / "commented.h"
    commented.write_text(text.replace("/* host end of the pod's veth */", "/* reworded */"))
    assert LV.version(LV.build_layouts(maps_h=commented)) == LV.version(LV.build_layouts())
    grown = tmp_path / "grown.h"
    grown.write_text(re.sub(r"(struct vnd_endpoint \{.*?)__u32 flags;", r"\1__u64 flags;", text, flags=re.S))
    changed = LV.build_layouts(maps_h=grown)
    assert changed["endpoints"] != LV.build_layouts()["endpoints"]
    assert {m for m in changed if changed[m] != LV.build_layouts()[m]} == {"endpoints"}
    assert LV.version(changed) != LV.version(LV.build_layouts())


def _pinned(monkeypatch, maps: dict) -> None:
    monkeypatch.setattr(LV, "pinned_layouts", lambda maps_dir: maps)


def test_the_same_layouts_are_compatible_and_new_maps_are_added(monkeypatch):
    build = LV.build_layouts()
    _pinned(monkeypatch, build)
    same = LV.check("/pins", build)
    assert same.compatible and same.build_version == same.pinned_version and same.added == []
    _pinned(monkeypatch, {m: v for m, v in build.items() if m != "snat_quota"})
    added = LV.check("/pins", build)
    assert added.compatible and added.added == ["snat_quota"] and added.build_version != added.pinned_version
    _pinned(monkeypatch, {**build, "old_map": [["int", 4], ["int", 8]]})
    assert LV.check("/pins", build).unused == ["old_map"]


def test_a_changed_map_is_refused_naming_both_versions_and_the_map(monkeypatch):
    build = LV.build_layouts()
    old = {**build, "endpoints": [["int", 4], ["struct", 16, build["endpoints"][1][2][:3]]]}
    _pinned(monkeypatch, old)
    with pytest.raises(LV.LayoutMismatch) as e:
        LV.check("/pins", build, what="build abc")
    message = str(e.value)
    assert LV.version(build) in message and LV.version(old) in message and "build abc" in message
    assert "endpoints: key/value 4/16 bytes pinned, 4/20 in the build" in message
    assert e.value.comparison.changed.keys() == {"endpoints"}


def test_maps_without_btf_are_compared_by_size(monkeypatch):
    build = LV.build_layouts()
    _pinned(monkeypatch, {**build, "endpoints": [["sizes", 4, 20]]})
    assert LV.compare("/pins", build).compatible
    _pinned(monkeypatch, {**build, "endpoints": [["sizes", 4, 24]]})
    assert LV.compare("/pins", build).changed == {"endpoints": "key/value 4/24 bytes pinned, 4/20 in the build"}


class _Strings:
    """A BTF string section being written: offset of each name, added once."""

    def __init__(self) -> None:
        self.data, self.at = b"\0", {"": 0}

    def __call__(self, name: str) -> int:
        if name not in self.at:
            self.at[name] = len(self.data)
            self.data += name.encode() + b"\0"
        return self.at[name]


def test_btf_shapes_match_cffi_shapes_of_the_same_struct():
    import cffi

    name = _Strings()
    member = lambda n, t, bit_offset: struct.pack("<III", name(n), t, bit_offset)  # noqa: E731
    types = [  # (kind, name, vlen, size or referenced type, what follows the common part)
        (1, "unsigned int", 0, 4, struct.pack("<I", 32)),       # 1
        (8, "__u32", 0, 1, b""),                                # 2
        (1, "unsigned char", 0, 1, struct.pack("<I", 8)),       # 3
        (8, "__u8", 0, 3, b""),                                 # 4
        (3, "", 0, 0, struct.pack("<III", 4, 1, 6)),            # 5: __u8[6]
        (1, "unsigned short", 0, 2, struct.pack("<I", 16)),     # 6
        (8, "__u16", 0, 6, b""),                                # 7
        (4, "s", 3, 12, member("a", 2, 0) + member("mac", 5, 32) + member("b", 7, 80)),  # 8
    ]
    body = b"".join(struct.pack("<III", name(n), kind << 24 | vlen, size) + extra
                    for kind, n, vlen, size, extra in types)
    raw = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(name.data)) + body + name.data
    btf = LV.Btf(raw)
    ffi = cffi.FFI()
    ffi.cdef("typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32;"
             "struct s { __u32 a; __u8 mac[6]; __u16 b; };")
    assert btf.shape(8) == LV.cffi_shape(ffi, "struct s") == \
        ["struct", 12, [["a", 0, 0, ["int", 4]], ["mac", 32, 0, ["array", 6, ["int", 1]]], ["b", 80, 0, ["int", 2]]]]
    assert btf.shape(2) == ["int", 4]


# --- the current-build marker ----------------------------------------------------------------

def _pin_build(root, build: str) -> None:
    """Stand-ins for a build's pinned programs (the loader only tests that they exist)."""
    d = root / "progs" / build
    d.mkdir(parents=True)
    for name in PROGRAMS:
        (d / name).write_text("")


def test_without_a_marker_the_sources_build_is_used_and_marked_on_load(tmp_path):
    programs = Programs(Bpffs(str(tmp_path)), str(tmp_path))
    assert programs.build == programs.source_build
    _pin_build(tmp_path, programs.source_build)
    _pin_build(tmp_path, "0ld0ld0ld0ld")          # pinned before markers existed
    (tmp_path / "progs" / "half").mkdir()          # an interrupted compile
    result = programs.load()
    assert (result.build, result.compiled) == (programs.source_build, False)
    bpffs = Bpffs(str(tmp_path))
    assert bpffs.marker(CURRENT) == programs.source_build
    assert bpffs.marker(PREVIOUS) == "0ld0ld0ld0ld"  # kept for a rollback
    assert bpffs.builds() == sorted([programs.source_build, "0ld0ld0ld0ld"])


def test_the_marker_wins_over_the_sources_and_costs_no_hashing(tmp_path, monkeypatch):
    bpffs = Bpffs(str(tmp_path))
    _pin_build(tmp_path, "rolledback01")
    bpffs.set_marker(CURRENT, "rolledback01")
    monkeypatch.setattr(loader, "build_id", lambda cflags: pytest.fail("hashed the sources"))
    programs = Programs(bpffs, str(tmp_path))
    assert programs.build == "rolledback01" and programs.is_loaded()
    assert programs.load().build == "rolledback01"
    assert programs.prog_pin("from_nic") == str(tmp_path / "progs" / "rolledback01" / "from_nic")
    _pin_build(tmp_path, "upgraded0002")
    bpffs.set_marker(CURRENT, "upgraded0002")
    assert programs.refresh() == "upgraded0002"


def test_prune_keeps_the_current_and_the_previous_build(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "build_id", lambda cflags: "source000000")
    bpffs = Bpffs(str(tmp_path))
    for build in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"):
        _pin_build(tmp_path, build)
    bpffs.set_marker(CURRENT, "cccccccccccc")
    bpffs.set_marker(PREVIOUS, "bbbbbbbbbbbb")
    assert Programs(bpffs, str(tmp_path)).prune() == ["aaaaaaaaaaaa"]
    assert bpffs.builds() == ["bbbbbbbbbbbb", "cccccccccccc"]


def test_load_refuses_a_build_whose_layouts_differ_from_the_pinned_maps(tmp_path, monkeypatch):
    build = LV.build_layouts()
    monkeypatch.setattr(LV, "pinned_layouts",
                        lambda maps_dir: {**build, "node": [["int", 4], ["struct", 28, build["node"][1][2][:-1]]]})
    programs = Programs(Bpffs(str(tmp_path)), str(tmp_path))
    with pytest.raises(IncompatibleLayout) as e:
        programs.check_layouts()
    assert isinstance(e.value, CompileError)  # CNI: code 103, the message names both versions
    assert f"build {programs.source_build} has map layout version {LV.version(build)}" in str(e.value)
    assert "node: key/value 4/28 bytes pinned, 4/32 in the build" in str(e.value)


# --- the command ---------------------------------------------------------------------------------

def test_cflags_may_start_with_a_dash():
    assert cli._join_cflags(["upgrade", "--cflags", "-DVND_UPGRADE_TEST=1", "--json"]) == \
        ["upgrade", "--cflags=-DVND_UPGRADE_TEST=1", "--json"]
    assert cli._join_cflags(["upgrade", "--rollback"]) == ["upgrade", "--rollback"]


def test_the_report_names_every_swap_old_and_new():
    report = upgrade.Report("upgrade", "aaaaaaaaaaaa", "bbbbbbbbbbbb", compiled=True,
                            layout={"build": "v1", "pinned": "v1", "compatible": True, "changed": {},
                                    "added": [], "unused": []},
                            replaced=[upgrade.Swap("eth0", "ingress", "tcx", "from_nic", 10, 20)],
                            unchanged=[upgrade.Swap("vnd0123456789a", "egress", "clsact", "to_container", 21, 21)],
                            previous="aaaaaaaaaaaa")
    text = upgrade.render(report)
    assert "build aaaaaaaaaaaa -> bbbbbbbbbbbb (compiled)" in text
    assert re.search(r"eth0\s+ingress\s+tcx\s+from_nic\s+10 -> 20", text)
    assert "1 replaced, 1 already current, 0 failed; previous build aaaaaaaaaaaa kept for --rollback" in text
    d = report.as_dict()
    assert (d["from"], d["to"], d["ok"]) == ("aaaaaaaaaaaa", "bbbbbbbbbbbb", True)
    assert d["replaced"] == [{"device": "eth0", "hook": "ingress", "mechanism": "tcx", "program": "from_nic",
                              "old_id": 10, "new_id": 20}]


def test_link_update_fills_union_bpf_attrs_link_update_member(monkeypatch):
    """link_fd, new_prog_fd, flags, old_prog_fd: four u32 at the union's start, the rest zero."""
    from vnetdp.datapath import syscall

    seen = []
    monkeypatch.setattr(syscall, "_call", lambda cmd, attr, what: seen.append(
        (cmd, bytes(syscall._ffi().buffer(attr)))) or 0)
    syscall.link_update(7, 9)
    syscall.link_update(7, 9, old_prog_fd=8)
    (cmd, plain), (_, guarded) = seen
    assert cmd == syscall.LINK_UPDATE == 29
    assert plain[:16] == struct.pack("<IIII", 7, 9, 0, 0) and not any(plain[16:])
    assert guarded[:16] == struct.pack("<IIII", 7, 9, syscall.BPF_F_REPLACE, 8) and not any(guarded[16:])
