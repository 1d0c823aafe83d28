#!/usr/bin/env bash
# Builds the static release binary (glibc linked statically, +crt-static) and checks it is
# static. The Dockerfile runs this script, so an image and a local build are the same binary.
#
# Usage: scripts/build-static.sh [amd64|arm64]     default amd64 (TARGET=<Rust triple> overrides)
# Output: target/<triple>/release/pullsecret-injector, <triple> x86_64-unknown-linux-gnu
#         (amd64) or aarch64-unknown-linux-gnu (arm64); with OUT=FILE also copied to FILE.
# For the other architecture than this machine's, the target's C cross compiler and libc are
# needed (ring compiles C; the static link takes the target's libc.a), e.g. on Debian:
#   amd64 machine, arm64 binary: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
#   arm64 machine, amd64 binary: apt-get install gcc-x86-64-linux-gnu libc6-dev-amd64-cross
# and the Rust target (rustup target add <triple>; added here when rustup is there).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-amd64}
case $arch in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64) triple=aarch64-unknown-linux-gnu ;;
  *) echo "build-static: architecture $arch: amd64 or arm64" >&2; exit 2 ;;
esac
target=${TARGET:-$triple}
if [ "${target%%-*}" != "$(uname -m)" ]; then
  # Cross: the target's gcc links, and compiles ring's C.
  cc=${target%%-*}-linux-gnu-gcc
  command -v "$cc" >/dev/null || { echo "build-static: $target from $(uname -m) needs $cc (see this script's header)" >&2; exit 1; }
  t=${target//-/_}
  export "CARGO_TARGET_${t^^}_LINKER=$cc" "CC_$t=$cc" "AR_$t=${target%%-*}-linux-gnu-ar"
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin pullsecret-injector
bin=target/$target/release/pullsecret-injector
if readelf -l "$bin" | grep -q 'INTERP\|Requesting program interpreter'; then
  echo "build-static: $bin is dynamically linked" >&2; exit 1
fi
if readelf -d "$bin" | grep -q NEEDED; then
  echo "build-static: $bin needs shared libraries:" >&2; readelf -d "$bin" | grep NEEDED >&2; exit 1
fi
if [ -n "${OUT:-}" ]; then cp "$bin" "$OUT"; fi
echo "build-static: $bin ($(du -h "$bin" | cut -f1), static, $(readelf -h "$bin" | sed -n 's/^ *Machine: *//p'))"
