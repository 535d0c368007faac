"""The tests' own pause image, built here without a registry: ``pause.c``
compiled static, put alone in one gzip layer, and written as an OCI image
layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>`` for
the manifest, the config and the layer), which ``ctr images import`` takes.

The image's name is in the index entry's ``io.containerd.image.name``
annotation, which containerd's importer uses as the whole name (the OCI
``org.opencontainers.image.ref.name`` annotation carries just the tag).
Everything is deterministic (no timestamps, owner 0), so the same compiler
output gives the same digests."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
from pathlib import Path

SOURCE = Path(__file__).with_name("pause.c")
IMAGE = "vnetdp.local/pause:1"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
#: uname -m -> the architecture names of OCI/Go.
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}


def go_arch(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return GO_ARCH.get(machine, machine)


def compile_pause(out: Path, cc: str = "cc") -> Path:
    """pause.c as a static, stripped executable at ``out``."""
    subprocess.run([cc, "-static", "-O2", "-s", "-o", str(out), str(SOURCE)], check=True,
                   capture_output=True, timeout=120)
    return out


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A deterministic tar of (name, content, mode) regular files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(binary: bytes, dest: Path, name: str = IMAGE, arch: str | None = None) -> dict:
    """Write the image (``binary`` as /pause, its entrypoint) to ``dest``;
    the digests written, by role."""
    arch = arch or go_arch()
    layer = _tar([("pause", binary, 0o755)])
    layer_gz = gzip.compress(layer, mtime=0)
    config = _json({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "vnetdp tests: pause.c, cc -static"}],
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": _digest(layer_gz), "size": len(layer_gz)}],
    })
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _json({
        "schemaVersion": 2, "mediaType": MEDIA_INDEX,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {CONTAINERD_NAME: name, OCI_REF_NAME: tag}}],
    })
    blobs = [layer_gz, config, manifest]
    entries = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"}), 0o644), ("index.json", index, 0o644)]
    entries += [(f"blobs/sha256/{_digest(b).split(':')[1]}", b, 0o644) for b in blobs]
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(_tar(entries))
    os.replace(tmp, dest)
    return {"manifest": _digest(manifest), "config": _digest(config), "layer": _digest(layer_gz),
            "diff_id": _digest(layer)}


def build(workdir: Path, name: str = IMAGE, cc: str = "cc") -> Path:
    """Compile pause.c and write the image archive in ``workdir``; its path."""
    binary = compile_pause(workdir / "pause", cc)
    dest = workdir / "pause-image.tar"
    oci_archive(binary.read_bytes(), dest, name)
    return dest
