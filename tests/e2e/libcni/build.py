"""Building the libcni driver (main.go here) for a test session: offline, in
GOPATH mode against Debian's packaged libcni sources (golang-github-appc-cni-dev
puts them in /usr/share/gocode/src), no module proxy, no network.

Used by tests/e2e/test_libcni.py and tests/unit/test_libcni_driver.py."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

DRIVER_DIR = pathlib.Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"
LIBCNI_SRC = f"{GOPATH}/src/github.com/containernetworking/cni/libcni"
#: Everything that decides how ``go build`` resolves imports, set explicitly so a
#: user's GOFLAGS, go env file or module settings cannot send it to the network.
GO_ENV = {"GO111MODULE": "off", "GOPATH": GOPATH, "GOPROXY": "off", "GOFLAGS": "",
          "GOENV": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
SETUP_HINT = "run `make setup` (APT_PACKAGES has golang-go and golang-github-appc-cni-dev)"


class DriverUnavailable(Exception):
    pass


def build(out_dir: str | os.PathLike) -> str:
    """``go build`` the driver into ``out_dir``; returns the binary's path."""
    go = shutil.which("go") or shutil.which("go", path="/usr/lib/go/bin")
    if go is None:
        raise DriverUnavailable(f"no `go` to build the libcni driver: {SETUP_HINT}")
    if not os.path.isdir(LIBCNI_SRC):
        raise DriverUnavailable(f"no libcni sources in {LIBCNI_SRC}: {SETUP_HINT}")
    out = os.path.join(out_dir, "cnidriver")
    with tempfile.TemporaryDirectory(prefix="vnd-gocache-") as cache:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GOCACHE": cache, **GO_ENV}
        proc = subprocess.run([go, "build", "-trimpath", "-o", out, "."], cwd=DRIVER_DIR, env=env,
                              capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise DriverUnavailable(f"go build of {DRIVER_DIR} failed:\n{proc.stderr}")
    return out
