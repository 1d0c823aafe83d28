#!/usr/bin/env bash
# shellcheck disable=SC2329 # functions run through step and the EXIT trap
# The whole node stage: packages, Kubernetes binaries (cached), the static injector binary, the
# story's test binary, the private registry, the one-node cluster, the injector's image, then
# the story (Rust tests, tests/node/story/: `cargo test --test node -- --ignored`), then
# everything stopped and the host restored (also on failure or Ctrl-C, by a trap). Prints each
# step's time and, before stopping, the resident memory of every component.
#
# Usage: tests/node/run.sh [BINARY]    BINARY: a static pullsecret-injector; default: build it
#                                      with scripts/build-static.sh
# Env:   NODE_KEEP=1      leave the cluster and registry running (stop later with tests/node/down.sh)
#        NODE_FILTER      test name filters for cargo test, space-separated (e.g. "s3a s4e")
#        NODE_LATENCY_RUNS  Deployments per variant in s5_latency (5)
#        CHART            another copy of the chart (default charts/pullsecret-injector)
#        DIR, ports... (tests/node/lib.sh), KUBELET_AS_ADMIN, KUBELET_SYNC_FREQUENCY (up.sh)
# Needs root (apt, containerd, kubelet, iptables). Exit status: 0 when every scenario passed.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root run.sh
H=$NODE_LIB_DIR
step() { # step NAME CMD...: run CMD, print its duration
  local t=$EPOCHREALTIME
  echo "=== $1"
  shift
  "$@"
  echo "--- done in $(since "$t")s"
}
rss() { # rss: resident memory of each component, MiB
  local f pid name kib total
  echo "=== resident memory (RSS)"
  for f in etcd apiserver controller-manager scheduler kubelet containerd/containerd registry/registry; do
    [ -s "$DIR/$f.pid" ] || continue
    pid=$(cat "$DIR/$f.pid")
    kib=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -n "$kib" ] && printf '  %-20s %6.1f MiB\n' "${f#*/}" "$(awk -v k="$kib" 'BEGIN { print k / 1024 }')"
  done
  total=0 n=0
  for pid in $(our_shims); do
    kib=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -n "$kib" ] && total=$((total + kib)) n=$((n + 1))
  done
  printf '  %-20s %6.1f MiB (%d shims)\n' "containerd-shims" "$(awk -v k="$total" 'BEGIN { print k / 1024 }')" "$n"
  for pid in $(ctrd tasks ls 2>/dev/null | awk 'NR > 1 { print $2 }'); do
    name=$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | head -n 1) || continue
    case $name in */pullsecret-injector) ;; *) continue ;; esac
    kib=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ')
    printf '  %-20s %6.1f MiB (pid %s)\n' "injector Pod" "$(awk -v k="$kib" 'BEGIN { print k / 1024 }')" "$pid"
  done
}
finish() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -d "$DIR" ] && rss
  if [ "${NODE_KEEP:-0}" = 1 ]; then
    echo "NODE_KEEP=1: left running; KUBECONFIG=$ADMIN_KUBECONFIG; stop with tests/node/down.sh"
  else
    step "down" "$H/down.sh" || rc=1
  fi
  echo "=== node stage $([ "$rc" = 0 ] && echo passed || echo FAILED) in $(since "$T0")s"
  exit "$rc"
}

BIN=${1:-}
step "deps" "$H/deps.sh"
step "kube binaries (tests/e2e/kube-build.sh, cached)" \
  env BINS="kube-apiserver kubelet kube-controller-manager kube-scheduler" "$ROOT/tests/e2e/kube-build.sh"
if [ -z "$BIN" ]; then
  step "static injector binary (scripts/build-static.sh)" "$ROOT/scripts/build-static.sh"
  BIN=$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector
fi
[ -x "$BIN" ] || { echo "run.sh: no binary at $BIN" >&2; exit 1; }
BIN=$(realpath "$BIN")
helm_tools() { # Helm (and PyYAML) from tests/chart/tools.sh; exports HELM and HELM_*_HOME
  # shellcheck source=tests/chart/tools.sh
  source "$ROOT/tests/chart/tools.sh"
  tools_install --no-checkov >/dev/null
}
step "helm (tests/chart/tools.sh)" helm_tools
# The test binary, before anything is started.
step "cargo test --test node --no-run" \
  bash -c "cd '$ROOT' && cargo test --locked --test node --no-run 2>&1 | tail -n 2"
# A previous run's cluster (NODE_KEEP=1, or killed) is stopped first: every run starts clean.
if [ -d "$DIR" ]; then step "down (left from a previous run)" "$H/down.sh"; fi
trap finish EXIT
trap 'exit 130' INT TERM
step "registry" "$H/registry-up.sh"
step "cluster" "$H/up.sh"
image() {
  IMG=$("$H/injector-image.sh" "$BIN")
  # Another image of the same binary, for s9b_helm_lifecycle's upgrade and rollback: another
  # tag and one more label, so another digest and a Deployment that rolls.
  IMG_NEXT=$(INJECTOR_TAG="${IMG##*:}-next" "$H/injector-image.sh" "$BIN" io.pullsecret-injector.test.build=next)
}
step "injector images (tests/node/injector-image.sh: scripts/build-image.sh)" image

export NODE_DIR=$DIR NODE_RUN=$DIR/story NODE_KUBECONFIG=$ADMIN_KUBECONFIG NODE_IMAGE=$IMG NODE_IMAGE_NEXT=$IMG_NEXT \
  NODE_BIN=$BIN NODE_HELM=$HELM NODE_REGISTRY=$REG NODE_CHART=${CHART:-$ROOT/charts/pullsecret-injector} NODE_IP=$NODE_IP
mkdir -p "$NODE_RUN"
echo "=== the story (cargo test --test node -- --ignored; binary $BIN, image $IMG)"
t=$EPOCHREALTIME
rc=0
# One at a time, in name order: the scenarios share the one installation and the one node.
# shellcheck disable=SC2086 # NODE_FILTER is a list of filters
(cd "$ROOT" && cargo test --locked --test node -- --ignored --test-threads 1 ${NODE_FILTER:-}) || rc=$?
passed=$(grep -c '^PASS ' "$NODE_RUN/report.txt" 2>/dev/null || true)
failed=$(grep -c '^FAIL ' "$NODE_RUN/report.txt" 2>/dev/null || true)
steps=$(grep -c '^  PASS ' "$NODE_RUN/report.txt" 2>/dev/null || true)
echo "=== story summary: ${passed:-0} scenarios passed (${steps:-0} steps), ${failed:-0} failed in $(since "$t")s ($NODE_RUN/report.txt)"
grep -E '^(FAIL|  FAIL) ' "$NODE_RUN/report.txt" 2>/dev/null | sed 's/^ */  /' || true
cp "$NODE_RUN/report.txt" "$DIR.report.txt" 2>/dev/null || true
[ -s "$NODE_RUN/latency.md" ] && cp "$NODE_RUN/latency.md" "$DIR.latency.md"
exit "$rc"
