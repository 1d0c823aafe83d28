#!/usr/bin/env bash
# Admitted in time under attack (issue 15): Pods created through a real kube-apiserver while
# one other address floods the webhook port.
#
# One injector (`serve --standalone`), in a memory cgroup limited like the chart's container
# (MEMORY_LIMIT, 128 MiB: its budget is derived from that limit, and going over it is a real
# OOM kill), registered with failurePolicy Ignore. Pods are created at RATE/s for DURATION s
# through the API server (bench/podload.py, open loop, each Pod read back and checked for its
# secret), twice: alone, then while bench/flood.py floods the webhook port from 127.0.0.2
# (TRICKLE connections trickling 7 MB bodies, HALF_OPEN connections stuck in the TLS
# handshake; closed ones replaced at once). The API server calls the webhook from 127.0.0.1.
#
# Per run: Pods created, Pods without their secret, `failed calling webhook` lines, the
# injector's peak memory (cgroup max_usage and VmHWM) and refusals, create p50/p99/max. Every
# run must have 0 missing, 0 failed calls, the injector alive and its peak under the limit.
# Appends rows to OUT/flood.tsv and exits non-zero otherwise.
#
# Usage: bench/flood.sh [BINARY]   (default target/x86_64-unknown-linux-gnu/release/pullsecret-injector)
# Env: RATE (20), DURATION (60), TRICKLE (300), HALF_OPEN (200), MEMORY_LIMIT (134217728),
#      CHUNKED (0; 1: the trickled bodies declare no length, so each is charged as it arrives),
#      OUT (bench/out), DIR (/tmp/psi-flood), API_PORT (25443), ETCD_PORT (25790),
#      ETCD_PEER_PORT (25800), PORT (25543), ADMIN (25081). Needs root for the memory cgroup
#      (cgroup v1 or v2); without one it runs with --memory-budget and reports VmHWM only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector}")
RATE=${RATE:-20} DURATION=${DURATION:-60} TRICKLE=${TRICKLE:-300} HALF_OPEN=${HALF_OPEN:-200}
MEMORY_LIMIT=${MEMORY_LIMIT:-134217728}
OUT=${OUT:-$ROOT/bench/out}
# Ports below the kernel's ephemeral range (32768-60999), as bench/rollout.sh says why.
export DIR=${DIR:-/tmp/psi-flood} API_PORT=${API_PORT:-25443} ETCD_PORT=${ETCD_PORT:-25790}
export ETCD_PEER_PORT=${ETCD_PEER_PORT:-25800}
PORT=${PORT:-25543} ADMIN=${ADMIN:-25081}
W=$DIR/flood
[ -x "$BIN" ] || { echo "flood.sh: no binary at $BIN" >&2; exit 2; }

# shellcheck source=tests/e2e/lib-proc.sh
source "$ROOT/tests/e2e/lib-proc.sh"
# shellcheck source=bench/lib-webhook.sh
source "$ROOT/bench/lib-webhook.sh"
"$ROOT/tests/e2e/kube-build.sh" >/dev/null
CGROUP=""
cleanup() {
  [ -f "$W/flood.pid" ] && kill "$(cat "$W/flood.pid")" 2>/dev/null
  proc_stop "$W/injector.pid" "serve --standalone" 5 || true
  "$ROOT/tests/e2e/kube-down.sh" >/dev/null 2>&1 || true
  # The cgroup can be removed once its last process has gone.
  if [ -n "$CGROUP" ]; then
    for _ in $(seq 1 50); do rmdir "$CGROUP" 2>/dev/null && break; sleep 0.1; done
  fi
  true
}
trap cleanup EXIT
"$ROOT/tests/e2e/kube-up.sh" >/dev/null
rm -rf "$W" && mkdir -p "$W" "$OUT"
export KUBECONFIG=$DIR/admin.kubeconfig
TOKEN=$(sed -n '1s/,.*//p' "$DIR/tokens.csv")
"$ROOT/certs/make-certs.sh" --out "$W/tls" --days 2 >/dev/null 2>&1
printf 'rules:\n  - registry: docker.io\n    secrets: [dockerhub]\n' >"$W/config.yaml"

# A memory cgroup like the container's: v2 (memory.max) or v1 (memory.limit_in_bytes).
if [ -w /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  CGROUP=/sys/fs/cgroup/psi-flood-$$
  mkdir "$CGROUP" && echo "$MEMORY_LIMIT" >"$CGROUP/memory.max"
  peak_file=$CGROUP/memory.peak
elif [ -w /sys/fs/cgroup/memory ]; then
  CGROUP=/sys/fs/cgroup/memory/psi-flood-$$
  mkdir "$CGROUP" && echo "$MEMORY_LIMIT" >"$CGROUP/memory.limit_in_bytes"
  peak_file=$CGROUP/memory.max_usage_in_bytes
else
  echo "flood.sh: no writable memory cgroup; the injector runs with --memory-budget $((MEMORY_LIMIT / 4))" >&2
fi

start_injector() {
  local budget=()
  [ -z "$CGROUP" ] && budget=(--memory-budget "$((MEMORY_LIMIT / 4))")
  # Enters the cgroup before exec, so the budget is derived from its limit at startup.
  sh -c '[ -n "$1" ] && echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$CGROUP" \
    "$BIN" serve --standalone --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    --tls-cert "$W/tls/tls.crt" --tls-key "$W/tls/tls.key" --config "$W/config.yaml" \
    "${budget[@]}" >>"$W/injector.log" 2>&1 </dev/null &
  echo $! >"$W/injector.pid"
  for _ in $(seq 1 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$ADMIN/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "flood.sh: the injector did not become ready" >&2; tail -n 5 "$W/injector.log" >&2; return 1
}
start_injector
{ grep -o 'memory_budget["=:]*[0-9]*' "$W/injector.log" || echo 'memory_budget not logged'; } | head -1 | sed 's/^/injector: /'

register_webhook flood-pullsecret-injector "https://127.0.0.1:$PORT/mutate" "$W/tls/ca.crt"

metric() { { curl -sf --max-time 2 "http://127.0.0.1:$ADMIN/metrics" || true; } | awk -v s="$1" 'index($0, s) == 1 { sum += $NF } END { print sum + 0 }'; }
[ -f "$OUT/flood.tsv" ] || printf 'date\tcommit\tflood\trate\tduration_s\tpods\tmissing\terrors\tfailed_calls\tp50_ms\tp99_ms\tmax_ms\tpeak_cgroup_mib\tvmhwm_mib\trefused\tflood_opened\tflood_answered\n' >"$OUT/flood.tsv"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
bad=0
for flood in off on; do
  ns=flood-$flood
  injected_namespace "$ns"
  [ -n "$CGROUP" ] && echo 0 >"$peak_file" 2>/dev/null || true
  before=$(failed_calls) refused_before=$(metric pullsecret_injector_requests_refused_total)
  if [ "$flood" = on ]; then
    chunked=(); [ "${CHUNKED:-0}" = 1 ] && chunked=(--chunked)
    python3 "$ROOT/bench/flood.py" --port "$PORT" --ca "$W/tls/ca.crt" --source 127.0.0.2 \
      --trickle "$TRICKLE" --half-open "$HALF_OPEN" --duration $((DURATION + 10)) "${chunked[@]}" >"$W/flood.json" 2>"$W/flood.err" &
    echo $! >"$W/flood.pid"
    sleep 10 # the flood at full strength before the first Pod
  fi
  python3 "$ROOT/bench/podload.py" --server "https://127.0.0.1:$API_PORT" --ca "$DIR/ca.crt" --token "$TOKEN" \
    --namespace "$ns" --rate "$RATE" --duration "$DURATION" --expect-secret dockerhub >"$W/load-$flood.json" 2>"$W/load-$flood.err"
  flood_opened=0 flood_answered='{}'
  if [ "$flood" = on ]; then
    wait "$(cat "$W/flood.pid")" || true
    rm -f "$W/flood.pid"
    read -r flood_opened flood_answered < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['connections_opened'], json.dumps(d['answered'], separators=(',', ':')))" "$W/flood.json")
  fi
  failed=$(($(failed_calls) - before))
  refused=$(( $(metric pullsecret_injector_requests_refused_total) - refused_before ))
  alive=1; proc_alive "$W/injector.pid" "serve --standalone" || alive=0
  peak=-1; [ -n "$CGROUP" ] && peak=$(( $(cat "$peak_file") / 1048576 ))
  hwm=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$(cat "$W/injector.pid")/status" 2>/dev/null || echo -1)
  read -r pods missing errors p50 p99 max < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['count'], d['missing'], d['errors'], d['p50_ms'], d['p99_ms'], d['max_ms'])" "$W/load-$flood.json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" "$flood$([ "$flood" = on ] && [ "${CHUNKED:-0}" = 1 ] && echo -chunked)" "$RATE" "$DURATION" \
    "$pods" "$missing" "$errors" "$failed" "$p50" "$p99" "$max" "$peak" "$hwm" "$refused" "$flood_opened" "$flood_answered" >>"$OUT/flood.tsv"
  echo "flood $flood: $pods Pods, $missing without their secret, $errors create errors, $failed failed webhook calls;" \
    "create p50 ${p50} ms, p99 ${p99} ms, max ${max} ms; injector peak ${peak} MiB (cgroup), VmHWM ${hwm} MiB," \
    "alive=$alive; refused $refused; flood: $flood_opened connections, answers $flood_answered"
  if [ "$missing" != 0 ] || [ "$failed" != 0 ] || [ "$alive" != 1 ] || [ "$peak" -ge $((MEMORY_LIMIT / 1048576)) ]; then
    bad=1
    { grep 'failed calling webhook' "$DIR/apiserver.log" || true; } | tail -n 3 | cut -c1-300
  fi
  sed 's/^/  create refused by the API server: /' "$W/load-$flood.err" | cut -c1-300 | head -n 5
  kubectl delete namespace "$ns" --wait=false >/dev/null
  [ "$alive" = 1 ] || break
done
exit "$bad"
