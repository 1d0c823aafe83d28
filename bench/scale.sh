#!/usr/bin/env bash
# Scale benchmark: the injector against a real kube-apiserver holding many namespaces and
# Secrets. Reports time from process start to /readyz 200 and resident memory once steady.
#
# Usage: bench/scale.sh [BINARY]   (default: the static release binary; build it with
#                                   scripts/build-static.sh)
# Env: NAMESPACES (2000), SECRETS_PER_NAMESPACE (5), ENABLED_EVERY (2: every 2nd namespace is
#      labelled pullsecret-injector/inject=enabled), SYNC (0|1), DIR (/tmp/psi-scale),
#      API_PORT (36443), ETCD_PORT (43790), ETCD_PEER_PORT (43800).
# Everything runs on loopback and is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector}
NAMESPACES=${NAMESPACES:-2000} PER_NS=${SECRETS_PER_NAMESPACE:-5} ENABLED_EVERY=${ENABLED_EVERY:-2}
SYNC=${SYNC:-0}
export DIR=${DIR:-/tmp/psi-scale} API_PORT=${API_PORT:-36443} ETCD_PORT=${ETCD_PORT:-43790} ETCD_PEER_PORT=${ETCD_PEER_PORT:-43800}
ADMIN_PORT=${ADMIN_PORT:-38080} TLS_PORT=${TLS_PORT:-38443}
[ -x "$BIN" ] || { echo "scale.sh: no binary at $BIN (scripts/build-static.sh)" >&2; exit 2; }

"$ROOT/tests/e2e/kube-build.sh" >/dev/null
"$ROOT/tests/e2e/kube-up.sh"
INJECTOR_PID=
cleanup() {
  [ -n "$INJECTOR_PID" ] && kill "$INJECTOR_PID" 2>/dev/null || true
  "$ROOT/tests/e2e/kube-down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export KUBECONFIG=$DIR/admin.kubeconfig
WORK=$DIR/scale && rm -rf "$WORK" && mkdir -p "$WORK"

echo "== creating $NAMESPACES namespaces and $((NAMESPACES * PER_NS)) Secrets"
t0=$SECONDS
kubectl create namespace pullsecret-injector >/dev/null
kubectl create secret docker-registry regcred -n pullsecret-injector --docker-server=https://index.docker.io/v1/ \
  --docker-username=bench --docker-password=bench >/dev/null
kubectl label secret regcred -n pullsecret-injector pullsecret-injector/source=true >/dev/null
python3 - "$WORK" "$NAMESPACES" "$PER_NS" "$ENABLED_EVERY" <<'PY'
import base64, json, sys
work, n, per, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunks = 8
files = [open(f"{work}/objects-{c}.json", "w") for c in range(chunks)]
for i in range(n):
    ns = f"scale-{i:05d}"
    labels = {"pullsecret-injector/inject": "enabled"} if i % every == 0 else {}
    out = files[i % chunks]
    out.write(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}) + "\n")
    for j in range(per):
        data = {"token": base64.b64encode(f"value-{i}-{j}".encode() * 8).decode()}
        out.write(json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                              "metadata": {"name": f"app-{j}", "namespace": ns, "labels": {"app": f"app-{j}"},
                                           "annotations": {"owner": "team-" + str(i % 17)}},
                              "data": data}) + "\n")
for f in files:
    f.close()
PY
# Namespaces first (each file lists a namespace before its Secrets), 8 clients in parallel.
ls "$WORK"/objects-*.json | xargs -P 8 -I{} kubectl create -f {} -o name >/dev/null
echo "created in $((SECONDS - t0)) s: $(kubectl get ns -o name | wc -l) namespaces, $(kubectl get secrets -A -o name | wc -l) Secrets"

"$ROOT/bench/certs.sh" "$WORK/certs" >/dev/null
cat > "$WORK/config.yaml" <<YAML
discovery: true
sync: $([ "$SYNC" = 1 ] && echo true || echo false)
secretAwareness: true
rules:
  - registry: ghcr.io/acme
    secrets: [ghcr-acme]
YAML
# The injector runs with cluster-admin here: this measures caches, not RBAC.
start_ns=$(date +%s%N)
"$BIN" serve --config "$WORK/config.yaml" --kubeconfig "$DIR/admin.kubeconfig" --namespace pullsecret-injector \
  --tls-cert "$WORK/certs/server.crt" --tls-key "$WORK/certs/server.key" \
  --listen "127.0.0.1:$TLS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --log-level warn >"$WORK/injector.log" 2>&1 &
INJECTOR_PID=$!
until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null; do
  kill -0 "$INJECTOR_PID" 2>/dev/null || { cat "$WORK/injector.log"; exit 1; }
  [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt 120 ] || { echo "not ready after 120 s"; exit 1; }
  sleep 0.05
done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
rss() { awk -v k="$1:" '$1==k {print $2}' "/proc/$INJECTOR_PID/status"; }
echo "ready after ${ready_ms} ms; RSS at ready $(( $(rss VmRSS) / 1024 )) MiB"
if [ "$SYNC" = 1 ]; then
  want=$(( (NAMESPACES + ENABLED_EVERY - 1) / ENABLED_EVERY ))
  until [ "$(kubectl get secrets -A -l app.kubernetes.io/managed-by=pullsecret-injector -o name | wc -l)" -ge "$want" ]; do
    [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt 300 ] || { echo "sync incomplete after 300 s"; exit 1; }
    sleep 1
  done
  echo "sync: $want copies present $(( ($(date +%s%N) - start_ns) / 1000000 )) ms after start"
fi
sleep 10
echo "steady (10 s later): VmRSS $(( $(rss VmRSS) / 1024 )) MiB, peak VmHWM $(( $(rss VmHWM) / 1024 )) MiB"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^pullsecret_injector_(watch_errors|secrets_synced|last_sync)' || true
