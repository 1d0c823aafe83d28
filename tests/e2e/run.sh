#!/usr/bin/env bash
# End-to-end tests of pullsecret-injector against a real kube-apiserver (1.20.2), etcd and
# kube-controller-manager on loopback. This script only builds and starts processes; the
# scenarios are Rust integration tests (tests/e2e/*.rs, `cargo test --test e2e -- --ignored`)
# that talk to the API server with the kube client and start the injector processes
# themselves. tests/e2e/README.md lists the scenarios.
#
# Usage: tests/e2e/run.sh [BINARY]      (default: target/debug/pullsecret-injector, built with
#                                         `cargo build --bin pullsecret-injector` first)
# Env:
#   E2E_FILTER         test name filters for cargo test, space-separated (e.g. "cluster_ sync_copies")
#   E2E_THREADS        scenarios run at once (default 16; most of them wait on the API server)
#   E2E_FAILURE_POLICY webhook.failurePolicy rendered by the chart: Ignore (default) or Fail
#   E2E_KEEP=1         leave etcd, the API server and the injectors running afterwards
#   E2E_LOG_LEVEL      the injectors' --log-level (default info,pullsecret_injector=debug)
#   E2E_PORT_BASE      first of the ports the injectors and the sidecar webhook use (27400..27499)
#   DIR                work directory (default /tmp/psi-e2e); this run's files in DIR/run
#   API_PORT ETCD_PORT ETCD_PEER_PORT   (26443, 33790, 33800)  see kube-up.sh
# Exit status: that of cargo test (0 when every selected scenario passed).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export DIR=${DIR:-/tmp/psi-e2e}
export API_PORT=${API_PORT:-26443} ETCD_PORT=${ETCD_PORT:-33790} ETCD_PEER_PORT=${ETCD_PEER_PORT:-33800}
E2E_KEEP=${E2E_KEEP:-0}
RUN=$DIR/run
START=$SECONDS

# shellcheck source=tests/e2e/lib-proc.sh
source "$HERE/lib-proc.sh"

if [ $# -ge 1 ]; then
  BIN=$1
  [ -x "$BIN" ] || { echo "run.sh: $BIN is not an executable" >&2; exit 2; }
else
  BIN=$ROOT/target/debug/pullsecret-injector
  echo "--- cargo build --bin pullsecret-injector"
  (cd "$ROOT" && cargo build --locked --bin pullsecret-injector)
fi
BIN=$(realpath "$BIN")

# kube-apiserver and kube-controller-manager (built once, cached), etcd, openssl.
BINS="kube-apiserver kube-controller-manager" "$HERE/kube-build.sh" >/dev/null
# Helm and a Python with PyYAML for tests/chart/render.sh, which the tests call.
# shellcheck source=tests/chart/tools.sh
source "$ROOT/tests/chart/tools.sh"
tools_install --no-checkov
# The test binary, before anything is started.
echo "--- cargo test --test e2e --no-run"
(cd "$ROOT" && cargo test --locked --test e2e --no-run 2>&1 | tail -n 2)

stop_injectors() {
  local f
  for f in "$RUN"/pids/*.pid; do
    [ -e "$f" ] && proc_stop "$f" pullsecret-injector 5
  done
  return 0
}
# shellcheck disable=SC2329 # called from the EXIT trap
cleanup() {
  local rc=$?
  if [ "$E2E_KEEP" = 1 ]; then
    echo "E2E_KEEP=1: left running; stop with: DIR=$DIR $HERE/kube-down.sh, and the injectors of $RUN/pids/*.pid"
  else
    stop_injectors || true
    "$HERE/kube-down.sh" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous run with E2E_KEEP=1 (or a killed one) may have left injectors behind.
stop_injectors
rm -rf "$RUN" && mkdir -p "$RUN/pids"
"$HERE/kube-up.sh" --controller-manager

export E2E_DIR=$DIR E2E_RUN=$RUN E2E_BIN=$BIN E2E_KUBECONFIG=$DIR/admin.kubeconfig E2E_CONTROLLER_MANAGER=1
echo "=== scenarios (binary $BIN; logs and renders in $RUN)"
rc=0
# shellcheck disable=SC2086 # E2E_FILTER is a list of filters
(cd "$ROOT" && cargo test --locked --test e2e -- --ignored --test-threads "${E2E_THREADS:-16}" ${E2E_FILTER:-}) || rc=$?

passed=$(grep -c '^PASS ' "$RUN/report.txt" 2>/dev/null || true)
failed=$(grep -c '^FAIL ' "$RUN/report.txt" 2>/dev/null || true)
echo "=== e2e summary: ${passed:-0} passed, ${failed:-0} failed in $((SECONDS - START)) s ($RUN/report.txt)"
# Per installation: setup time, and the span from its first scenario's start to its last's end.
awk '
  /^SETUP \[/ { split($2, a, /[][]/); setup[a[2]] = $5 }
  /^(PASS|FAIL) \[/ && match($0, /, [0-9.]+s\.\.[0-9.]+s\)/) {
    split($2, a, /[][]/); i = a[2]; n[i]++
    span = substr($0, RSTART + 2, RLENGTH - 3); split(span, t, /s\.\./); sub(/s$/, "", t[2])
    if (!(i in lo) || t[1] + 0 < lo[i]) lo[i] = t[1] + 0
    if (t[2] + 0 > hi[i]) hi[i] = t[2] + 0
  }
  END { for (i in n) printf "  %-11s setup %6s ms, %2d scenarios from %5.1f s to %5.1f s\n", i, setup[i], n[i], lo[i], hi[i] }
' "$RUN/report.txt" 2>/dev/null | sort || true
grep '^FAIL ' "$RUN/report.txt" 2>/dev/null | sed 's/^/  /' || true
exit "$rc"
