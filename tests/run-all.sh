#!/usr/bin/env bash
# The whole test suite, in the order a failure is cheapest to find:
#   1. cargo test: unit tables, router fixtures, robustness, TLS/reload/drain, the CLI binary
#   2. fuzzing: every cargo-fuzz target for a short run (properties, not only "no panic")
#   3. the static release binary (the Dockerfile's build command), used by the next steps
#   4. Kubernetes' own binaries (built once from Debian's source package, then cached)
#   5. Helm chart checks, including a live install on an API server and the binary smoke test
#   6. the alert rules (promtool test rules on the chart's rendered PrometheusRule)
#   6b. the credential probe against the real distribution registry (htpasswd, then token auth)
#   7. end to end against a real kube-apiserver (scenarios in Rust)
#   8. admissions during a rollout: two injectors behind a TCP proxy, no Pod without its secret
#   9. a real one-node cluster: kubelet, containerd, an authenticated registry, the chart
# As root on Debian it installs what it needs (apt: etcd, kubectl, Go for the Kubernetes build,
# containerd, registry, haproxy, promtool...; PyPI tools into .tools/).
# Skip parts with FUZZ=0, CHART=0, ALERTS=0, PROBE=0, E2E=0 (also skips 8 and 9), ROLLOUT=0, NODE=0.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo; echo "=== $* ($((SECONDS - started))s)"; }

step "cargo test"
cargo test --locked

if [ "${FUZZ:-1}" = 1 ]; then
  step "fuzzing (short run per target)"
  fuzz/run.sh "${FUZZ_SECONDS:-20}"
fi

step "static release binary"
scripts/build-static.sh
BIN=$PWD/target/x86_64-unknown-linux-gnu/release/pullsecret-injector
"$BIN" check-config --config examples/config.yaml

if [ "${E2E:-1}" = 1 ] || [ "${NODE:-1}" = 1 ]; then
  step "Kubernetes binaries (built once, cached)"
  tests/e2e/kube-build.sh
fi

if [ "${CHART:-1}" = 1 ]; then
  step "Helm chart"
  PULLSECRET_INJECTOR_BIN=$BIN tests/chart/run.sh
fi

if [ "${ALERTS:-1}" = 1 ]; then
  step "alert rules (promtool)"
  tests/alerts/run.sh
fi

if [ "${PROBE:-1}" = 1 ]; then
  step "credential probe against the real registry (docker-registry)"
  tests/probe/run.sh
fi

if [ "${E2E:-1}" = 1 ]; then
  step "end to end against a real kube-apiserver"
  tests/e2e/run.sh "$BIN"
  if [ "${ROLLOUT:-1}" = 1 ]; then
    step "admissions during a rollout (bench/rollout.sh, one run)"
    RUNS=1 DURATION=${ROLLOUT_SECONDS:-40} bench/rollout.sh "$BIN"
  fi
fi

if [ "${NODE:-1}" = 1 ] && [ "${E2E:-1}" = 1 ]; then
  step "a real one-node cluster"
  tests/node/run.sh "$BIN"
fi

step "all tests passed"
