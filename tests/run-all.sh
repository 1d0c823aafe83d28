#!/usr/bin/env bash
# The whole test suite, in the order a failure is cheapest to find:
#   1. cargo test: unit tables, router fixtures, robustness, TLS/reload/drain, the CLI binary
#   2. the static release binary (the Dockerfile's build command), used by the next steps
#   3. the real kube-apiserver (built once from Debian's source package, then cached)
#   4. Helm chart checks, including a live install on that API server and the binary smoke test
#   5. end-to-end scenarios against that API server
# As root on Debian it installs what it needs (apt: etcd, kubectl, Go for the API server build,
# jq, openssl, curl; PyPI tools into .tools/). E2E=0 or CHART=0 skip steps 3-5 / 4.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo; echo "=== $* ($((SECONDS - started))s)"; }

step "cargo test"
cargo test --locked

step "static release binary"
scripts/build-static.sh
BIN=$PWD/target/x86_64-unknown-linux-gnu/release/pullsecret-injector
"$BIN" check-config --config examples/config.yaml

if [ "${E2E:-1}" = 1 ]; then
  step "kube-apiserver (built once, cached)"
  tests/e2e/kube-build.sh
fi

if [ "${CHART:-1}" = 1 ]; then
  step "Helm chart"
  PULLSECRET_INJECTOR_BIN=$BIN tests/chart/run.sh
fi

if [ "${E2E:-1}" = 1 ]; then
  step "end to end against a real kube-apiserver"
  tests/e2e/run.sh "$BIN"
fi

step "all tests passed"
