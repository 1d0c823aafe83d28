#!/usr/bin/env bash
# Scale benchmark: the injector against a real kube-apiserver holding many namespaces and
# Secrets. For each mode, reports the time from process start to /readyz 200 and resident
# memory: at ready, steady (STEADY_S later) and the peak (VmHWM, the high-water mark since
# start).
#
# Usage: bench/scale.sh [BINARY]   (default: the static release binary; build it with
#                                   scripts/build-static.sh)
# Env: NAMESPACES (2000); DOCKER_PER_NS (1) docker config Secrets per namespace (alternately
#      kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg); OTHER_PER_NS (4) other
#      Secrets per namespace (Opaque, kubernetes.io/tls); ENABLED_EVERY (2: every 2nd namespace
#      is labelled pullsecret-injector/inject=enabled);
#      MODES ("awareness sync"): one injector run per mode, in order, on the same cluster:
#        awareness  secretAwareness on, discovery and sync off
#        sync       secretAwareness, discovery and sync on (a copy of the source Secret in every
#                   opted-in namespace; runs last, as it adds those copies to the cluster)
#      STEADY_S (10), WORKERS (16, parallel creates), OUT (bench/out; rows appended to
#      OUT/scale.tsv), DIR (/tmp/psi-scale), API_PORT (36443), ETCD_PORT (43790),
#      ETCD_PEER_PORT (43800), ADMIN_PORT (38080), TLS_PORT (38443).
#      KEEP=1 leaves the cluster running at the end (and removes sync's copies), REUSE=1 uses
#      the cluster a KEEP=1 run left in DIR instead of creating one (for measuring a new build
#      without waiting for the objects again).
# The issue's large case: NAMESPACES=10000 DOCKER_PER_NS=2 OTHER_PER_NS=8 (100,000 Secrets).
# Everything runs on loopback and is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector}")
NAMESPACES=${NAMESPACES:-2000} DOCKER_PER_NS=${DOCKER_PER_NS:-1} OTHER_PER_NS=${OTHER_PER_NS:-4}
ENABLED_EVERY=${ENABLED_EVERY:-2} MODES=${MODES-"awareness sync"} STEADY_S=${STEADY_S:-10}
WORKERS=${WORKERS:-16} OUT=${OUT:-$ROOT/bench/out}
export DIR=${DIR:-/tmp/psi-scale} API_PORT=${API_PORT:-36443} ETCD_PORT=${ETCD_PORT:-43790} ETCD_PEER_PORT=${ETCD_PEER_PORT:-43800}
ADMIN_PORT=${ADMIN_PORT:-38080} TLS_PORT=${TLS_PORT:-38443}
[ -x "$BIN" ] || { echo "scale.sh: no binary at $BIN (scripts/build-static.sh)" >&2; exit 2; }

KEEP=${KEEP:-0} REUSE=${REUSE:-0}
INJECTOR_PID=
cleanup() {
  [ -n "$INJECTOR_PID" ] && kill "$INJECTOR_PID" 2>/dev/null || true
  [ "$KEEP" = 1 ] || "$ROOT/tests/e2e/kube-down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export KUBECONFIG=$DIR/admin.kubeconfig
WORK=$DIR/scale
secrets=$((NAMESPACES * (DOCKER_PER_NS + OTHER_PER_NS)))
if [ "$REUSE" = 1 ]; then
  [ -f "$WORK/created.json" ] && kubectl get --raw /readyz >/dev/null ||
    { echo "scale.sh: REUSE=1 but no cluster with objects in $DIR (run once with KEEP=1)" >&2; exit 2; }
  TOKEN=$(sed -n '1s/,.*//p' "$DIR/tokens.csv")
else
  "$ROOT/tests/e2e/kube-build.sh" >/dev/null
  "$ROOT/tests/e2e/kube-up.sh"
  TOKEN=$(sed -n '1s/,.*//p' "$DIR/tokens.csv")
  rm -rf "$WORK" && mkdir -p "$WORK"

  echo "== creating $NAMESPACES namespaces and $secrets Secrets ($((NAMESPACES * DOCKER_PER_NS)) docker config) with $WORKERS parallel clients"
  kubectl create namespace pullsecret-injector >/dev/null
  kubectl create secret docker-registry regcred -n pullsecret-injector --docker-server=https://index.docker.io/v1/ \
    --docker-username=bench --docker-password=bench >/dev/null
  kubectl label secret regcred -n pullsecret-injector pullsecret-injector/source=true >/dev/null
  python3 "$ROOT/bench/mkobjects.py" --server "https://127.0.0.1:$API_PORT" --ca "$DIR/ca.crt" --token "$TOKEN" \
    --namespaces "$NAMESPACES" --docker "$DOCKER_PER_NS" --other "$OTHER_PER_NS" \
    --enabled-every "$ENABLED_EVERY" --workers "$WORKERS" | tee "$WORK/created.json"
fi
mkdir -p "$OUT"
setup_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total_s"])' "$WORK/created.json")

[ -f "$WORK/certs/server.crt" ] || "$ROOT/bench/certs.sh" "$WORK/certs" >/dev/null
TSV=$OUT/scale.tsv
[ -s "$TSV" ] || printf 'utc\tcommit\tbinary\tmode\tnamespaces\tsecrets\tdocker_secrets\tsetup_s\tready_ms\trss_ready_mib\trss_steady_mib\tpeak_hwm_mib\tsync_ms\tload1\n' >"$TSV"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null) || commit="$commit+dirty"

mib() { awk -v k="$1:" '$1==k {printf "%.1f", $2/1024}' "/proc/$INJECTOR_PID/status"; }
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
for mode in $MODES; do
  case $mode in
    awareness) discovery=false sync=false ;;
    sync) discovery=true sync=true ;;
    *) echo "scale.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
  cat > "$WORK/config-$mode.yaml" <<YAML
discovery: $discovery
sync: $sync
secretAwareness: true
rules:
  - registry: ghcr.io/acme
    secrets: [ghcr-acme]
YAML
  load1=$(cut -d' ' -f1 /proc/loadavg)
  # The injector runs with cluster-admin here: this measures caches, not RBAC.
  start_ns=$(date +%s%N)
  "$BIN" serve --config "$WORK/config-$mode.yaml" --kubeconfig "$DIR/admin.kubeconfig" --namespace pullsecret-injector \
    --tls-cert "$WORK/certs/server.crt" --tls-key "$WORK/certs/server.key" \
    --listen "127.0.0.1:$TLS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --log-level warn >"$WORK/injector-$mode.log" 2>&1 &
  INJECTOR_PID=$!
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null; do
    kill -0 "$INJECTOR_PID" 2>/dev/null || { cat "$WORK/injector-$mode.log"; exit 1; }
    [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt 120 ] || { echo "not ready after 120 s"; exit 1; }
    sleep 0.02
  done
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  rss_ready=$(mib VmRSS)
  echo "== $mode: ready after ${ready_ms} ms; RSS at ready $rss_ready MiB, peak so far $(mib VmHWM) MiB"
  sync_ms=-
  if [ "$mode" = sync ]; then
    want=$(( (NAMESPACES + ENABLED_EVERY - 1) / ENABLED_EVERY ))
    until [ "$(metric 'pullsecret_injector_secrets_synced_total{kind="written"}')" -ge "$want" ] 2>/dev/null; do
      [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt 600 ] || { echo "sync incomplete after 600 s"; exit 1; }
      sleep 0.5
    done
    sync_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
    echo "sync: $want copies written ${sync_ms} ms after start"
  fi
  sleep "$STEADY_S"
  rss_steady=$(mib VmRSS) hwm=$(mib VmHWM)
  echo "steady (${STEADY_S} s later): VmRSS $rss_steady MiB, peak VmHWM $hwm MiB"
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^pullsecret_injector_(watch_errors|secrets_synced|sync_failures)' || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" "$(basename "$BIN")" "$mode" "$NAMESPACES" "$secrets" \
    "$((NAMESPACES * DOCKER_PER_NS))" "$setup_s" "$ready_ms" "$rss_ready" "$rss_steady" "$hwm" "$sync_ms" "$load1" >>"$TSV"
  kill "$INJECTOR_PID"; wait "$INJECTOR_PID" 2>/dev/null || true; INJECTOR_PID=
done
if [ "$KEEP" = 1 ] && [[ " $MODES " == *" sync "* ]]; then
  echo "== KEEP=1: removing sync's copies, so that the next REUSE=1 run sees the same cluster"
  kubectl delete secrets -A -l app.kubernetes.io/managed-by=pullsecret-injector --wait=false >/dev/null
fi
echo "rows appended to $TSV"
