#!/usr/bin/env bash
# Admission latency as a user sees it: Pods created through a real kube-apiserver (1.20.2, etcd,
# loopback) by bench/podload.py in a closed loop with 1, 10 and 50 concurrent clients, once with
# no webhook and once with the injector registered and injecting, alternately for each client
# count. Reports create latency (mean, p50, p99) for both and the difference, and the API
# server's own apiserver_admission_webhook_admission_duration_seconds for our webhook over each
# run (from GET /metrics; its buckets are 5, 25, 100, 500 ms, 1, 2.5 s, so its mean is the
# useful figure).
#
# The injector runs as the chart installs it by default: cluster mode (namespace watch; no
# secret awareness, discovery or sync), one rule docker.io -> dockerhub, behind a
# MutatingWebhookConfiguration with a url on loopback, failurePolicy Ignore, timeoutSeconds 5,
# reinvocationPolicy IfNeeded, the chart's namespace and object selectors. Every Pod created
# with the webhook on is checked to carry the dockerhub secret (podload --expect-secret).
# Nothing is pinned: the API server, etcd, the client and the injector share the machine's
# cores, as they would share a control-plane node. Every run creates its Pods in a namespace of
# its own (opted in, with the Secret), so that it starts from an empty one; Pods are named, not
# generateName'd (Kubernetes 1.20 fails a create whose generated name collides with an existing
# Pod instead of drawing again: podload --unique-names).
#
# Usage: bench/apiserver-latency.sh [BINARY]   (default: the static release binary)
# Env: CLIENTS ("1 10 50"), DURATION (60 s per run), ROUNDS (1: none/webhook pairs per client
#      count), OUT (bench/out; rows appended to OUT/apiserver-latency.tsv, raw JSON in
#      OUT/apiserver-latency/), DIR (/tmp/psi-latency), API_PORT (56443), ETCD_PORT (63790),
#      ETCD_PEER_PORT (63800), TLS_PORT (57443), ADMIN_PORT (57081).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector}")
CLIENTS=${CLIENTS:-"1 10 50"} DURATION=${DURATION:-60} ROUNDS=${ROUNDS:-1}
OUT=${OUT:-$ROOT/bench/out}
export DIR=${DIR:-/tmp/psi-latency} API_PORT=${API_PORT:-56443} ETCD_PORT=${ETCD_PORT:-63790}
export ETCD_PEER_PORT=${ETCD_PEER_PORT:-63800}
TLS_PORT=${TLS_PORT:-57443} ADMIN_PORT=${ADMIN_PORT:-57081}
NS=latency HOOK=inject.pullsecret-injector.io
[ -x "$BIN" ] || { echo "apiserver-latency.sh: no binary at $BIN (scripts/build-static.sh)" >&2; exit 2; }

"$ROOT/tests/e2e/kube-build.sh" >/dev/null
INJECTOR_PID=
cleanup() {
  [ -n "$INJECTOR_PID" ] && kill "$INJECTOR_PID" 2>/dev/null || true
  "$ROOT/tests/e2e/kube-down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$ROOT/tests/e2e/kube-up.sh" >/dev/null
export KUBECONFIG=$DIR/admin.kubeconfig
TOKEN=$(sed -n '1s/,.*//p' "$DIR/tokens.csv")
W=$DIR/latency && rm -rf "$W" && mkdir -p "$W" "$OUT/apiserver-latency"
"$ROOT/bench/certs.sh" "$W/certs" >/dev/null

kubectl create namespace pullsecret-injector >/dev/null
new_namespace() { # NAME: opted in, with the Secret the rule names
  kubectl create namespace "$1" >/dev/null
  kubectl label namespace "$1" pullsecret-injector/inject=enabled >/dev/null
  kubectl create secret docker-registry dockerhub -n "$1" --docker-server=https://index.docker.io/v1/ \
    --docker-username=u --docker-password=p >/dev/null
}
new_namespace "$NS"
cat >"$W/config.yaml" <<'EOF'
rules:
  - registry: docker.io
    secrets: [dockerhub]
EOF
"$BIN" serve --config "$W/config.yaml" --kubeconfig "$DIR/admin.kubeconfig" --namespace pullsecret-injector \
  --tls-cert "$W/certs/server.crt" --tls-key "$W/certs/server.key" \
  --listen "127.0.0.1:$TLS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --log-level warn >"$W/injector.log" 2>&1 &
INJECTOR_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { cat "$W/injector.log"; exit 1; }

webhook() { # on|off
  if [ "$1" = off ]; then
    kubectl delete mutatingwebhookconfiguration latency-pullsecret-injector --ignore-not-found >/dev/null
    for _ in $(seq 1 100); do probe | grep -q dockerhub || return 0; sleep 0.1; done
    echo "apiserver-latency.sh: the webhook still answers after removal" >&2; exit 1
  fi
  kubectl apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: latency-pullsecret-injector}
webhooks:
  - name: $HOOK
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Ignore
    timeoutSeconds: 5
    matchPolicy: Equivalent
    reinvocationPolicy: IfNeeded
    clientConfig:
      url: https://127.0.0.1:$TLS_PORT/mutate
      caBundle: $(base64 -w0 "$W/certs/ca.crt")
    rules: [{apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"], scope: Namespaced}]
    namespaceSelector:
      matchExpressions: [{key: pullsecret-injector/inject, operator: In, values: [enabled]}]
    objectSelector:
      matchExpressions: [{key: pullsecret-injector/inject, operator: NotIn, values: [disabled]}]
EOF
  for _ in $(seq 1 100); do probe | grep -q dockerhub && return 0; sleep 0.1; done
  echo "apiserver-latency.sh: the webhook does not inject" >&2; exit 1
}
probe() {
  kubectl create -n "$NS" --dry-run=server -o jsonpath='{.spec.imagePullSecrets[*].name}' -f - \
    <<<'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}' 2>/dev/null
}
# The webhook's duration metric, summed over its label sets: "count sum le=0.005 le=0.025 ...".
hook_metric() {
  curl -sf --cacert "$DIR/ca.crt" -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/metrics" |
    awk -v hook="$HOOK" '
      index($0, "apiserver_admission_webhook_admission_duration_seconds") == 1 && index($0, "name=\"" hook "\"") {
        if ($1 ~ /_count\{/) c += $2
        else if ($1 ~ /_sum\{/) s += $2
        else if (match($1, /le="[^"]+"/)) { le = substr($1, RSTART + 4, RLENGTH - 5); b[le] += $2; order[le] = 1 }
      }
      END { printf "%d %.6f", c, s; for (k in order) printf " %s=%d", k, b[k]; printf "\n" }'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$INJECTOR_PID/stat"; }

TSV=$OUT/apiserver-latency.tsv
[ -s "$TSV" ] || printf 'utc\tcommit\tround\tclients\twebhook\tduration_s\tcount\terrors\tmissing\tper_s\tmean_ms\tp50_ms\tp90_ms\tp99_ms\tmax_ms\thook_calls\thook_mean_ms\thook_le5ms_pct\tinjector_cpu_us_per_call\tload1\n' >"$TSV"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
CLK_TCK=$(getconf CLK_TCK)
declare -A MEAN P50 P99
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    for mode in off on; do
      webhook "$mode"
      ns=$NS-$round-$c-$mode
      new_namespace "$ns"
      sleep 2
      load1=$(cut -d' ' -f1 /proc/loadavg)
      read -r c0 s0 buckets0 < <(hook_metric); t0=$(cpu_ticks)
      expect=(); [ "$mode" = on ] && expect=(--expect-secret dockerhub)
      json=$OUT/apiserver-latency/$(date -u +%Y%m%dT%H%M%SZ)-c$c-$mode.json
      python3 "$ROOT/bench/podload.py" --server "https://127.0.0.1:$API_PORT" --ca "$DIR/ca.crt" --token "$TOKEN" \
        --namespace "$ns" --clients "$c" --duration "$DURATION" --unique-names "${expect[@]}" >"$json"
      t1=$(cpu_ticks)
      read -r c1 s1 buckets < <(hook_metric)
      le5() { awk -v b="$1" 'BEGIN { n = split(b, a, " "); v = 0; for (i = 1; i <= n; i++) if (a[i] ~ /^0.005=/) { sub(/^0.005=/, "", a[i]); v = a[i] } print v }'; }
      le5_0=$(le5 "${buckets0:-}") le5_1=$(le5 "${buckets:-}")
      read -r count errors missing per_s mean p50 p90 p99 max < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(*(d[k] for k in ("count", "errors", "missing", "achieved_per_s", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")))' "$json")
      calls=$((c1 - c0))
      if [ "$calls" -gt 0 ]; then
        hook_mean=$(awk -v s0="$s0" -v s1="$s1" -v n="$calls" 'BEGIN { printf "%.3f", (s1 - s0) * 1000 / n }')
        hook_le5=$(awk -v b="$le5_1" -v start="$le5_0" -v n="$calls" 'BEGIN { printf "%.1f", 100 * (b - start) / n }')
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$calls" 'BEGIN { printf "%.0f", d * 1e6 / hz / n }')
      else hook_mean=- hook_le5=- cpu=-; fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" \
        "$round" "$c" "$mode" "$DURATION" "$count" "$errors" "$missing" "$per_s" "$mean" "$p50" "$p90" "$p99" "$max" \
        "$calls" "$hook_mean" "$hook_le5" "$cpu" "$load1" >>"$TSV"
      echo "round $round, $c clients, webhook $mode: $count creates ($per_s/s), $errors errors, $missing without the secret;" \
        "mean $mean ms, p50 $p50 ms, p99 $p99 ms; webhook calls $calls, API server's mean $hook_mean ms ($hook_le5% under 5 ms), injector CPU ${cpu} µs/call (load $load1)"
      MEAN[$c$mode]=$mean P50[$c$mode]=$p50 P99[$c$mode]=$p99
      if [ "$mode" = on ] && { [ "$errors" != 0 ] || [ "$missing" != 0 ]; }; then
        echo "apiserver-latency.sh: $errors errors, $missing Pods without their secret" >&2; exit 1
      fi
    done
    awk -v c="$c" -v m0="${MEAN[${c}off]}" -v m1="${MEAN[${c}on]}" -v a0="${P50[${c}off]}" -v a1="${P50[${c}on]}" \
      -v p0="${P99[${c}off]}" -v p1="${P99[${c}on]}" 'BEGIN {
      printf "== %s clients: webhook adds %+.2f ms mean, %+.2f ms p50, %+.2f ms p99\n", c, m1 - m0, a1 - a0, p1 - p0 }'
  done
done
echo "rows appended to $TSV"
