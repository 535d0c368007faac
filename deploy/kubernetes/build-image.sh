#!/usr/bin/env bash
# Build the vnetdp node image without a registry: Debian bookworm debootstrapped from the
# Debian mirror with every package the image needs, imported into podman, and
# deploy/kubernetes/Containerfile built on it with --network=none.
#
# Usage (root, from anywhere; needs debootstrap, podman, runc, util-linux's unshare):
#   deploy/kubernetes/build-image.sh --store DIR [--tag TAG] [--save FILE] [--mirror URL]
#   deploy/kubernetes/build-image.sh --save vnetdp-node.tar        # a temporary store, removed
#
#   --store DIR   podman's storage for this build: DIR/root, DIR/runroot and DIR/tmp (use them
#                 as `podman --root DIR/root --runroot DIR/runroot --tmpdir DIR/tmp
#                 --storage-driver overlay`);
#                 the image is localhost/vnetdp-node:TAG there. The caller removes DIR.
#   --save FILE   also write the image as a docker-archive (`ctr -n k8s.io images import FILE`
#                 on a containerd node, `docker load`, or `skopeo copy` to a registry).
#   --tag TAG     default: the version in pyproject.toml. The image is also tagged latest.
#   --mirror URL  the Debian mirror (default: debootstrap's own default).
#
# Network: the Debian mirror (debootstrap) and PyPI (pip download of the wheels of
# pyproject.toml's dependencies, see below), both from this machine; no step of the image
# build itself has any (--network=none) or pulls anything (--pull=never).
#
# Nothing is left behind outside DIR: debootstrap and podman run in a private mount
# namespace (their proc and overlay mounts end with it), podman keeps its storage, run
# and temporary files under DIR or a temporary directory, and sees /run as an empty tmpfs
# and /etc/containers through a private copy. The machine's network namespaces, links,
# routes and firewall rules are never touched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
containerfile="$here/Containerfile"

if [ "${1:-}" = --inner ]; then
  # --- inside the private mount namespace -------------------------------------------------
  shift
  work=$1 store=$2 tag=$3 save=$4 mirror=$5
  t0=$(date +%s%N)
  say() { local ds=$(( ($(date +%s%N) - t0) / 100000000 )); printf 'build-image: %s (%d.%d s)\n' "$1" $((ds / 10)) $((ds % 10)); }
  # The package lists live in the Containerfile (ARG PACKAGES / ARG BUILD_PACKAGES).
  packages() { sed -n "s/^ARG $1=\"\(.*\)\"\$/\1/p" "$containerfile" | tr ' ' ','; }
  runtime_pkgs=$(packages PACKAGES) build_pkgs=$(packages BUILD_PACKAGES)
  [ -n "$runtime_pkgs" ] && [ -n "$build_pkgs" ] || { echo "build-image: no package lists in $containerfile" >&2; exit 1; }

  # One after the other, sharing the package cache (in parallel they took as long here: 2 cores).
  mkdir -p "$work/debs"
  for which in base build-base; do
    pkgs=$([ $which = base ] && echo "$runtime_pkgs" || echo "$build_pkgs")
    debootstrap --variant=minbase --include="$pkgs" --cache-dir="$work/debs" \
      bookworm "$work/$which" ${mirror:+"$mirror"} >"$work/debootstrap-$which.log" 2>&1 \
      || { tail -n 30 "$work/debootstrap-$which.log" "$work/$which/debootstrap/debootstrap.log" >&2; exit 1; }
    rm -rf "$work/$which"/var/cache/apt/archives/*.deb "$work/$which"/var/lib/apt/lists/*
    say "debootstrapped $which ($pkgs)"
  done

  # podman, private: storage under $store, everything else under $work.
  # A private /run (the OCI runtime's state, podman's network run directory) and a private
  # copy of /etc/containers: podman and runc create directories in both.
  # podman's temporary directory is recorded in the store's database and used by every later
  # podman on that store whatever its --tmpdir says: so it lives in the store too.
  mkdir -p "$work/etc-containers" "$work/tmp" "$store/root" "$store/runroot" "$store/tmp"
  cp -a /etc/containers/. "$work/etc-containers/" 2>/dev/null || true
  mount --bind "$work/etc-containers" /etc/containers
  mount -t tmpfs -o mode=0755 vnetdp-build-run /run
  cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
# runc: crun refuses a cgroup v1/v2 hybrid host ("cgroups in hybrid mode not supported").
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$store/events.log"
tmp_dir = "$store/tmp"
EOF
  export CONTAINERS_CONF="$work/containers.conf" TMPDIR="$work/tmp"
  podman() { command podman --root "$store/root" --runroot "$store/runroot" --storage-driver overlay \
             --tmpdir "$store/tmp" --cgroup-manager cgroupfs --events-backend file "$@"; }
  for which in base build-base; do
    tar -C "$work/$which" --numeric-owner -c . | podman import --quiet - "localhost/vnetdp-$which:latest" >/dev/null
    rm -rf "${work:?}/$which"
  done
  say "imported localhost/vnetdp-base and localhost/vnetdp-build-base"
  podman build --quiet --network=none --pull=never --ulimit nofile=1024:1024 \
    -f "$work/context/deploy/kubernetes/Containerfile" -t "localhost/vnetdp-node:$tag" -t localhost/vnetdp-node:latest \
    "$work/context" >/dev/null
  podman rmi --force localhost/vnetdp-build-base:latest >/dev/null
  podman image prune --force >/dev/null
  say "built localhost/vnetdp-node:$tag"
  if [ -n "$save" ]; then
    rm -f "$save"
    podman save --quiet --format docker-archive -o "$save" "localhost/vnetdp-node:$tag"
    say "saved $save"
  fi
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep vnetdp-node
  exit 0
fi

# --- outside: arguments, temporary directories, the private namespace ---------------------
store="" save="" mirror="" tag=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/pyproject.toml")
while [ $# -gt 0 ]; do
  case $1 in
    --store) store=$2; shift 2 ;;
    --save) save=$(realpath -m "$2"); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "build-image: run as root (debootstrap, podman with a private root)" >&2; exit 1; }
for tool in debootstrap podman runc unshare; do
  command -v $tool >/dev/null || { echo "build-image: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
[ -n "$store" ] || [ -n "$save" ] || { echo "build-image: give --store DIR or --save FILE" >&2; exit 2; }

work=$(mktemp -d /var/tmp/vnetdp-image.XXXXXX)
cleanup() {
  # The private namespace is gone, its mounts with it: only files remain.
  rm -rf "$work"
}
trap cleanup EXIT

# The build context: the product's files only (no venv, no caches), and wheels for the
# runtime dependencies in pyproject.toml. In the image, pip takes each dependency from
# Debian's packages when their version satisfies it and from these wheels otherwise
# (prometheus_client: bookworm's is too old), offline; it fails when neither does.
ctx=$work/context
mkdir -p "$ctx/deploy" "$ctx/wheels"
cp -a "$top/pyproject.toml" "$top/vnetdp" "$top/cni" "$top/bpf" "$ctx/"
cp -a "$top/deploy/kubernetes" "$ctx/deploy/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
python=$top/.venv/bin/python
[ -x "$python" ] || python=python3
mapfile -t deps < <("$python" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"], sep="\n")' "$top/pyproject.toml")
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --implementation cp --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$ctx/wheels" "${deps[@]}" || { echo "build-image: pip download of ${deps[*]} failed" >&2; exit 1; }
echo "build-image: wheels for ${deps[*]}: $(cd "$ctx/wheels" && echo *)"
own_store=""
if [ -z "$store" ]; then store="$work/store"; own_store=1; fi
store=$(realpath -m "$store")
# --propagation private: no mount made inside reaches the machine's namespace.
unshare --mount --propagation private -- "$0" --inner "$work" "$store" "$tag" "$save" "$mirror"
[ -z "$own_store" ] || echo "build-image: the temporary store is removed; the image is in $save"
