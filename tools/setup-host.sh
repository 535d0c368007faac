#!/usr/bin/env bash
# Install the Debian packages vnetdp needs, and kernel headers for bcc.
# Usage: tools/setup-host.sh PACKAGE...   (idempotent; fast when all is there)
set -euo pipefail

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

kver=$(uname -r)
build=/lib/modules/$kver/build
if [ ! -e "$build/include/linux/kconfig.h" ] && [ ! -e "$build/Makefile" ]; then
  # Prefer the running kernel's own headers; else Debian's current ones.
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    missing+=("linux-headers-$kver")
  else
    missing+=(linux-headers-amd64)
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -e "$build" ] || [ ! -e "/lib/modules/$kver/source" ]; then
  # No headers for the running kernel: link Debian's newest (build = arch
  # part, source = common part), which is what bcc needs to compile.
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$arch" ] || { echo "setup: no kernel headers under /usr/src" >&2; exit 1; }
  common=${arch%-amd64}-common
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$arch" "$build"
  ln -sfn "$( [ -d "$common" ] && echo "$common" || echo "$arch")" "/lib/modules/$kver/source"
  echo "setup: linked $arch as headers for $kver"
fi
