#!/usr/bin/env bash
# Installs what building and testing Weir need on a fresh Debian machine; fast when all is there.
set -euo pipefail

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: adding rustup components rustfmt and clippy"
  rustup component add rustfmt clippy
fi

# Debian packages the Rust build links against (openssl for git2/libssh2) and the test tools use.
need=()
for pkg in pkg-config libssl-dev git openssl curl ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
