#!/usr/bin/env bash
# Zero failed admissions during a rollout, measured on a real kube-apiserver.
#
# Two injector processes behind one address (haproxy in TCP mode with an HTTP check on
# /readyz, standing in for a Service and kube-proxy), Pods created at RATE/s for DURATION s
# through the API server (bench/podload.py, open loop) while, in turn: injector A restarts,
# B restarts, the serving certificate rotates (both reload it), the config reloads, A and B
# restart again. Each restart is what a rolling update does to a Pod: SIGTERM (not ready,
# keep answering --shutdown-delay, drain), exit, start, ready.
#
# Counts, per run: Pods created, Pods admitted without their secret (the webhook answered
# nothing, or wrongly), and `failed calling webhook` lines in the API server log. Both must be
# 0. Appends one row per run to OUT/rollout.tsv and exits non-zero if any run had a failure.
# Creates the API server itself refused (e.g. a ServerTimeout when etcd is slow on a loaded
# machine) are counted and shown with their reason, but they are not admissions: a refused
# create stores no Pod, with or without secrets.
#
# Usage: bench/rollout.sh [BINARY]   (default target/debug/pullsecret-injector)
# Env: RUNS (5), RATE (20), DURATION (60), SHUTDOWN_DELAY (5s), DRAIN_TIMEOUT (10s),
#      OUT (bench/out), DIR (/tmp/psi-rollout), API_PORT (24443), ETCD_PORT (24790),
#      ETCD_PEER_PORT (24800), PROXY_PORT (24543), A_PORT/B_PORT (24544/24545),
#      A_ADMIN/B_ADMIN (24081/24082). Needs haproxy (installed with apt-get when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/debug/pullsecret-injector}")
RUNS=${RUNS:-5} RATE=${RATE:-20} DURATION=${DURATION:-60}
SHUTDOWN_DELAY=${SHUTDOWN_DELAY:-5s} DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-10s}
OUT=${OUT:-$ROOT/bench/out}
# Every port is below the kernel's ephemeral range (32768-60999): a port in it can be taken at
# any moment as the source port of some outgoing connection, and then cannot be listened on.
export DIR=${DIR:-/tmp/psi-rollout} API_PORT=${API_PORT:-24443} ETCD_PORT=${ETCD_PORT:-24790}
export ETCD_PEER_PORT=${ETCD_PEER_PORT:-24800}
PROXY_PORT=${PROXY_PORT:-24543} A_PORT=${A_PORT:-24544} B_PORT=${B_PORT:-24545}
A_ADMIN=${A_ADMIN:-24081} B_ADMIN=${B_ADMIN:-24082}
W=$DIR/rollout
[ -x "$BIN" ] || { echo "rollout.sh: no binary at $BIN" >&2; exit 2; }
command -v haproxy >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null

# shellcheck source=tests/e2e/lib-proc.sh
source "$ROOT/tests/e2e/lib-proc.sh"
# shellcheck source=bench/lib-webhook.sh
source "$ROOT/bench/lib-webhook.sh"
"$ROOT/tests/e2e/kube-build.sh" >/dev/null
cleanup() {
  # Each step may fail (a process already gone) without stopping the rest of the cleanup.
  for p in a b haproxy; do [ -f "$W/$p.pid" ] && kill "$(cat "$W/$p.pid")" 2>/dev/null || true; done
  "$ROOT/tests/e2e/kube-down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$ROOT/tests/e2e/kube-up.sh" >/dev/null
rm -rf "$W" && mkdir -p "$W" "$OUT"
export KUBECONFIG=$DIR/admin.kubeconfig
TOKEN=$(sed -n '1s/,.*//p' "$DIR/tokens.csv")
"$ROOT/certs/make-certs.sh" --out "$W/tls" --days 2 >/dev/null 2>&1

cat >"$W/config.yaml" <<'EOF'
rules:
  - registry: docker.io
    secrets: [dockerhub]
EOF

# haproxy: TCP, like kube-proxy; a backend leaves rotation when /readyz says 503. Its client
# and server timeouts are longer than the API server's idle timeout (90 s), so haproxy never
# closes a keep-alive connection the API server might be about to use.
cat >"$W/haproxy.cfg" <<EOF
global
  maxconn 2000
defaults
  mode tcp
  timeout connect 2s
  timeout client 300s
  timeout server 300s
  retries 3
  option redispatch
frontend webhook
  bind 127.0.0.1:$PROXY_PORT
  default_backend injectors
backend injectors
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 1 rise 2
  server a 127.0.0.1:$A_PORT check port $A_ADMIN
  server b 127.0.0.1:$B_PORT check port $B_ADMIN
EOF
haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
echo $! >"$W/haproxy.pid"

start() { # NAME PORT ADMIN
  "$BIN" serve --standalone --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --tls-cert "$W/tls/tls.crt" --tls-key "$W/tls/tls.key" --config "$W/config.yaml" \
    --reload-interval 500ms --shutdown-delay "$SHUTDOWN_DELAY" --drain-timeout "$DRAIN_TIMEOUT" \
    >>"$W/$1.log" 2>&1 </dev/null &
  echo $! >"$W/$1.pid"
  for _ in $(seq 1 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$3/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "rollout.sh: $1 did not become ready" >&2; tail -n 5 "$W/$1.log" >&2; return 1
}
restart() { # NAME PORT ADMIN: what a rolling update does to one Pod
  local pid; pid=$(cat "$W/$1.pid")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  wait "$pid" 2>/dev/null || true
  start "$@"
}
start a "$A_PORT" "$A_ADMIN"
start b "$B_PORT" "$B_ADMIN"

register_webhook rollout-pullsecret-injector "https://127.0.0.1:$PROXY_PORT/mutate" "$W/tls/ca.crt" IfNeeded

[ -f "$OUT/rollout.tsv" ] || printf 'date\tcommit\trun\trate\tduration_s\tpods\tmissing\terrors\tfailed_calls\tp50_ms\tp99_ms\tmax_ms\n' >"$OUT/rollout.tsv"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
bad=0
for run in $(seq 1 "$RUNS"); do
  ns=rollout-$run
  injected_namespace "$ns"
  before=$(failed_calls)
  python3 "$ROOT/bench/podload.py" --server "https://127.0.0.1:$API_PORT" --ca "$DIR/ca.crt" --token "$TOKEN" \
    --namespace "$ns" --rate "$RATE" --duration "$DURATION" --expect-secret dockerhub >"$W/load-$run.json" 2>"$W/load-$run.err" &
  load=$!
  step() { sleep "$1"; shift; "$@"; }
  (
    step $((DURATION * 13 / 100)) restart a "$A_PORT" "$A_ADMIN"
    step $((DURATION * 12 / 100)) restart b "$B_PORT" "$B_ADMIN"
    step $((DURATION * 10 / 100)) "$ROOT/certs/make-certs.sh" --out "$W/tls" --days 2
    step $((DURATION * 10 / 100)) sh -c "printf '# reloaded at %s\n' \"\$(date +%T)\" >>'$W/config.yaml'"
    step $((DURATION * 10 / 100)) restart a "$A_PORT" "$A_ADMIN"
    step $((DURATION * 5 / 100)) restart b "$B_PORT" "$B_ADMIN"
  ) >"$W/driver-$run.log" 2>&1
  wait "$load"
  failed=$(($(failed_calls) - before))
  read -r pods missing errors p50 p99 max < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['count'], d['missing'], d['errors'], d['p50_ms'], d['p99_ms'], d['max_ms'])" "$W/load-$run.json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" "$run" "$RATE" "$DURATION" \
    "$pods" "$missing" "$errors" "$failed" "$p50" "$p99" "$max" >>"$OUT/rollout.tsv"
  echo "run $run: $pods Pods, $missing without their secret, $errors create errors, $failed failed webhook calls (p50 ${p50} ms, p99 ${p99} ms, max ${max} ms)"
  if [ "$missing" != 0 ] || [ "$failed" != 0 ]; then
    bad=1
    { grep 'failed calling webhook' "$DIR/apiserver.log" || true; } | tail -n 3 | cut -c1-300
  fi
  sed 's/^/  create refused by the API server: /' "$W/load-$run.err" | cut -c1-300 | head -n 5
  kubectl delete namespace "$ns" --wait=false >/dev/null
done
# Certificate reloads and config reloads did happen (else the run proved nothing about them).
for p in a b; do
  grep -q "serving certificate reloaded" "$W/$p.log" || { echo "rollout.sh: $p never reloaded its certificate" >&2; bad=1; }
  grep -q "configuration reloaded" "$W/$p.log" || { echo "rollout.sh: $p never reloaded its config" >&2; bad=1; }
done
exit "$bad"
