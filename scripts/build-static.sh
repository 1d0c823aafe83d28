#!/usr/bin/env bash
# Builds the static release binary, exactly as the Dockerfile does, and checks it is static.
# Output: target/x86_64-unknown-linux-gnu/release/pullsecret-injector
set -euo pipefail
cd "$(dirname "$0")/.."
target=${TARGET:-x86_64-unknown-linux-gnu}
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin pullsecret-injector
bin=target/$target/release/pullsecret-injector
if readelf -l "$bin" | grep -q 'INTERP\|Requesting program interpreter'; then
  echo "build-static: $bin is dynamically linked" >&2; exit 1
fi
if readelf -d "$bin" | grep -q NEEDED; then
  echo "build-static: $bin needs shared libraries:" >&2; readelf -d "$bin" | grep NEEDED >&2; exit 1
fi
echo "build-static: $bin ($(du -h "$bin" | cut -f1), static)"
