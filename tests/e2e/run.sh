#!/usr/bin/env bash
# End-to-end tests of pullsecret-injector against a real kube-apiserver (1.20.2) and etcd on
# loopback: the chart's own RBAC and MutatingWebhookConfiguration are applied (rewritten to call
# https://127.0.0.1:INJ_PORT), the injector runs as a local process under the chart's service
# account identity, and Pods are created with kubectl and read back from the API server.
#
# Usage: tests/e2e/run.sh [BINARY]      (default target/debug/pullsecret-injector; built with
#                                         `cargo build --bin pullsecret-injector` only if missing)
# Env:
#   E2E_ONLY           phases to run, comma-separated (default: standalone,cluster,discovery,sync)
#   E2E_SCENARIOS      scenarios to run, comma-separated ids or letters, e.g. a,h,sync (default: all)
#   E2E_FAILURE_POLICY webhook.failurePolicy rendered by the chart: Ignore (default) or Fail
#   E2E_KEEP=1         leave etcd, the API server and the injector running afterwards
#   E2E_LOG_LEVEL      the injector's --log-level (default info,pullsecret_injector=debug)
#   DIR                work directory (default /tmp/psi-e2e)
#   API_PORT ETCD_PORT ETCD_PEER_PORT   (26443, 33790, 33800)  see kube-up.sh
#   INJ_PORT ADMIN_PORT SIDECAR_PORT    (27443, 27080, 27444)  injector TLS, admin, test webhook
# Exit status: 0 when every selected scenario passed. tests/e2e/README.md lists the scenarios.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export DIR=${DIR:-/tmp/psi-e2e}
export API_PORT=${API_PORT:-26443} ETCD_PORT=${ETCD_PORT:-33790} ETCD_PEER_PORT=${ETCD_PEER_PORT:-33800}
INJ_PORT=${INJ_PORT:-27443} ADMIN_PORT=${ADMIN_PORT:-27080} SIDECAR_PORT=${SIDECAR_PORT:-27444}
E2E_ONLY=${E2E_ONLY:-standalone,cluster,discovery,sync}
E2E_SCENARIOS=${E2E_SCENARIOS:-}
E2E_FAILURE_POLICY=${E2E_FAILURE_POLICY:-Ignore}
E2E_KEEP=${E2E_KEEP:-0}
E2E_LOG_LEVEL=${E2E_LOG_LEVEL:-info,pullsecret_injector=debug}
OWN_NS=pullsecret-injector
SA=system:serviceaccount:pullsecret-injector:pullsecret-injector
ADMIN=$DIR/admin.kubeconfig
W=$DIR/run                                  # this run's files: config, certs, renders, logs
LOG=$W/injector.log
START=$SECONDS

case $E2E_FAILURE_POLICY in Ignore | Fail) ;; *) echo "E2E_FAILURE_POLICY must be Ignore or Fail" >&2; exit 2 ;; esac

# shellcheck source=tests/e2e/lib-proc.sh
source "$HERE/lib-proc.sh"

# ---------------------------------------------------------------- setup

BIN=${1:-$ROOT/target/debug/pullsecret-injector}
if [ ! -x "$BIN" ]; then
  if [ $# -ge 1 ]; then echo "run.sh: $BIN is not an executable" >&2; exit 2; fi
  echo "--- building $BIN"
  (cd "$ROOT" && cargo build --bin pullsecret-injector)
fi
BIN=$(realpath "$BIN")

"$HERE/kube-build.sh" >/dev/null
# Helm (for the chart's own RBAC and webhook configuration) and a Python with PyYAML.
# shellcheck source=tests/chart/tools.sh
source "$ROOT/tests/chart/tools.sh"
tools_install --no-checkov

cleanup() {
  local rc=$?
  if [ "$E2E_KEEP" = 1 ]; then
    echo "E2E_KEEP=1: left running; stop with: kill \$(cat $W/injector.pid $W/sidecar.pid); DIR=$DIR $HERE/kube-down.sh"
  else
    proc_stop "$W/injector.pid" pullsecret-injector 5 || true
    proc_stop "$W/sidecar.pid" sidecar_webhook.py 5 || true
    "$HERE/kube-down.sh" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous run with E2E_KEEP=1 may have left these behind (recorded pids only).
proc_stop "$W/injector.pid" pullsecret-injector 5
proc_stop "$W/sidecar.pid" sidecar_webhook.py 5
rm -rf "$W" && mkdir -p "$W/kube-cache"
"$HERE/kube-up.sh"

k() { kubectl --kubeconfig "$ADMIN" --cache-dir "$W/kube-cache" --request-timeout=20s "$@"; }

"$ROOT/certs/make-certs.sh" --out "$W/tls" --days 2 >/dev/null 2>&1
python3 "$HERE/sidecar_webhook.py" --port "$SIDECAR_PORT" --cert "$W/tls/tls.crt" --key "$W/tls/tls.key" \
  >"$W/sidecar.log" 2>&1 </dev/null &
echo $! >"$W/sidecar.pid"
k create namespace "$OWN_NS" >/dev/null

# ---------------------------------------------------------------- reporting

PASSED=() FAILED=() SKIPPED=()
REASON=''
fail() { REASON="$*"; return 1; }
NOTES=()
note() { NOTES+=("$*"); }                       # printed under the scenario's PASS/FAIL line
log_lines() { if [ -f "$LOG" ]; then wc -l <"$LOG"; else echo 0; fi; }
now_ms() { date +%s%3N; }

selected_phase() { [[ ",$E2E_ONLY," == *",$1,"* ]]; }
# A scenario is selected by its id (e.g. h-failure-policy) or the letter before the dash (h).
selected_scenario() {
  [ -z "$E2E_SCENARIOS" ] || [[ ",$E2E_SCENARIOS," == *",$1,"* ]] || [[ ",$E2E_SCENARIOS," == *",${1%%-*},"* ]]
}

# run_scenario ID DESCRIPTION FUNCTION: runs FUNCTION (which returns non-zero after `fail REASON`),
# prints PASS/FAIL, dumps the injector's log lines written meanwhile on failure, then deletes the
# scenario's namespaces and runs its cleanup commands.
SCEN='' SCEN_NS=() SCEN_CLEANUP=()
run_scenario() {
  local id=$1 desc=$2 fn=$3 mark t0 ms
  selected_scenario "$id" || return 0
  SCEN=$id SCEN_NS=() SCEN_CLEANUP=() REASON='' NOTES=()
  mark=$(log_lines) t0=$(now_ms)
  local fails_before; fails_before=$(webhook_call_failures)
  if "$fn" && no_new_webhook_failures "$id" "$fails_before"; then
    ms=$(($(now_ms) - t0))
    echo "PASS [$PHASE] $id: $desc (${ms} ms)"
    PASSED+=("$PHASE/$id")
    print_notes
  else
    ms=$(($(now_ms) - t0))
    echo "FAIL [$PHASE] $id: $desc (${ms} ms)"
    echo "     reason: ${REASON:-unknown (the scenario returned non-zero without a reason)}"
    FAILED+=("$PHASE/$id: ${REASON%%$'\n'*}")
    print_notes
    echo "     --- injector log during the scenario (last 60 lines):"
    tail -n +"$((mark + 1))" "$LOG" 2>/dev/null | tail -n 60 | strip_ansi | sed 's/^/     | /'
  fi
  local c
  for c in "${SCEN_CLEANUP[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
  if [ ${#SCEN_NS[@]} -gt 0 ]; then k delete namespace "${SCEN_NS[@]}" --wait=false >/dev/null 2>&1 || true; fi
}

# The API server logs every failed call to the injector; with failurePolicy Ignore that is a Pod
# created without injection, so any failure outside the scenarios that stop something fails.
webhook_call_failures() { grep -c 'failed calling webhook "[a-z]*\.pullsecret-injector\.io"' "$DIR/apiserver.log" 2>/dev/null || true; }
no_new_webhook_failures() { # ID COUNT_BEFORE
  local now
  case $1 in h-failure-policy | i-apiserver-restart) return 0 ;; esac
  now=$(webhook_call_failures)
  [ "$now" = "$2" ] || fail "${REASON:+$REASON; }the API server logged $((now - $2)) failed call(s) to the injector: $(grep 'failed calling webhook "[a-z]*\.pullsecret-injector\.io"' "$DIR/apiserver.log" | tail -n 1 | cut -c1-400)"
}
print_notes() { local n; for n in "${NOTES[@]}"; do echo "     ($n)"; done; }
# The plain log format may carry ANSI colours.
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# wait_until TIMEOUT_S COMMAND...: retries COMMAND every 0.1 s; sets WAITED_MS.
WAITED_MS=0
wait_until() {
  local timeout=$1 t0 deadline
  shift
  t0=$(now_ms) deadline=$(($(now_ms) + timeout * 1000))
  while :; do
    if "$@" >/dev/null 2>&1; then WAITED_MS=$(($(now_ms) - t0)); return 0; fi
    [ "$(now_ms)" -lt "$deadline" ] || { WAITED_MS=$(($(now_ms) - t0)); return 1; }
    sleep 0.1
  done
}

# ---------------------------------------------------------------- injector, chart, metrics

metrics() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics"; }
# metric NAME: the sum of the samples of NAME (all label sets; or exactly one when NAME has {...}).
metric() {
  metrics | awk -v m="$1" '
    index($0, m) == 1 { rest = substr($0, length(m) + 1)
      if (m ~ /[{]/ || rest ~ /^[{ ]/) { s += $NF } }
    END { print s + 0 }'
}
RELOADS_OK='pullsecret_injector_config_reloads_total{result="success"}'
reloads_changed() { [ "$(metric "$RELOADS_OK")" != "$1" ]; }
metric_above() { [ "$(metric "$1")" -gt "$2" ]; }
readyz() { curl -sf --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null; }
livez() { curl -sf --max-time 2 "http://127.0.0.1:$ADMIN_PORT/livez" >/dev/null; }

MODE=standalone
injector_start() {
  local args=(serve --listen "127.0.0.1:$INJ_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT"
    --tls-cert "$W/tls/tls.crt" --tls-key "$W/tls/tls.key" --config "$W/config.yaml"
    --namespace "$OWN_NS" --reload-interval 200ms --shutdown-delay 0s --drain-timeout 2s
    --log-level "$E2E_LOG_LEVEL")
  if [ "$MODE" = standalone ]; then args+=(--standalone); else args+=(--kubeconfig "$DIR/injector.kubeconfig"); fi
  echo "--- $(date +%T) start: pullsecret-injector ${args[*]}" >>"$LOG"
  "$BIN" "${args[@]}" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$W/injector.pid"
  for _ in $(seq 1 200); do
    readyz && return 0
    proc_alive "$W/injector.pid" pullsecret-injector || fail "the injector exited at startup: $(tail -n 3 "$LOG")" || return 1
    sleep 0.1
  done
  fail "the injector did not become ready within 20 s: $(curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz")"
}

# injector_stop: SIGTERM, expect a clean exit (status 0) within 5 s (--shutdown-delay 0s).
injector_stop() {
  local pid rc
  proc_alive "$W/injector.pid" pullsecret-injector || { rm -f "$W/injector.pid"; return 0; }
  pid=$(cat "$W/injector.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$W/injector.pid"
    fail "the injector did not exit within 5 s of SIGTERM (killed)"; return 1
  fi
  rc=0; wait "$pid" 2>/dev/null || rc=$?
  rm -f "$W/injector.pid"
  [ "$rc" = 0 ] || fail "the injector exited with status $rc after SIGTERM"
}

# render NAME VALUES_YAML [KUBE_VERSION]: renders the chart into $W/chart-NAME and points its
# webhook configuration at the local injector (to_loopback.py): webhook-loopback.yaml.
render() {
  local name=$1 values=$2 kube=${3:-1.20.2} out=$W/chart-$1
  mkdir -p "$out"
  printf '%s\n' "$values" >"$out/values.yaml"
  "$ROOT/tests/chart/render.sh" -k "$kube" "$out/values.yaml" "$out" >"$out/render.log" 2>&1 ||
    fail "helm render of $name failed: $(tail -n 5 "$out/render.log")" || return 1
  "$PY" "$ROOT/tests/chart/to_loopback.py" "$out/webhook.yaml" --port "$INJ_PORT" \
    --ca-file "$W/tls/ca.crt" -o "$out/webhook-loopback.yaml" 2>"$out/loopback.log" ||
    fail "to_loopback.py failed: $(cat "$out/loopback.log")"
}

# install_config NAME: the rendered ConfigMap's config.yaml becomes the injector's config file
# (written atomically: the injector polls it).
install_config() {
  cp "$W/chart-$1/config.yaml" "$W/config.yaml.tmp" && mv "$W/config.yaml.tmp" "$W/config.yaml"
}

# apply_chart NAME: replaces the RBAC objects with the chart's (none when standalone) and applies
# the loopback webhook configuration.
apply_chart() {
  local out=$W/chart-$1
  k delete clusterrolebinding,clusterrole pullsecret-injector --ignore-not-found >/dev/null 2>&1 || true
  k delete -n "$OWN_NS" rolebinding,role pullsecret-injector-sources --ignore-not-found >/dev/null 2>&1 || true
  if grep -q '^kind:' "$out/rbac.yaml" 2>/dev/null; then
    k apply -f "$out/rbac.yaml" >"$out/apply.log" 2>&1 || fail "applying the chart's RBAC failed: $(cat "$out/apply.log")" || return 1
  fi
  k apply -f "$out/webhook-loopback.yaml" >"$out/apply.log" 2>&1 ||
    fail "applying the chart's webhook configuration failed: $(cat "$out/apply.log")"
}

# ---------------------------------------------------------------- namespaces, secrets, Pods

NS_COUNT=0
DOCKER_CFG_DOCKERHUB=$(printf '{"auths":{"https://index.docker.io/v1/":{"auth":"%s"}}}' "$(printf 'u:hub-e2e-pass' | base64 -w0)" | base64 -w0)
DOCKER_CFG_GHCR=$(printf '{"auths":{"ghcr.io":{"auth":"%s"}}}' "$(printf 'u:ghcr-e2e-pass' | base64 -w0)" | base64 -w0)

secret_json() { # NAME NAMESPACE B64_DOCKERCONFIG
  jq -n --arg n "$1" --arg ns "$2" --arg d "$3" \
    '{apiVersion:"v1",kind:"Secret",metadata:{name:$n,namespace:$ns},type:"kubernetes.io/dockerconfigjson",data:{".dockerconfigjson":$d}}'
}

# new_ns LABEL [SECRETS]: creates a namespace for this scenario (LABEL: enabled, audit,
# disabled, or - for none) holding the dockerconfigjson Secrets named in SECRETS (default
# "dockerhub ghcr-acme", so cluster mode's secret awareness sees them; "-" for none).
# Sets NS. Extra labels: NS_LABELS="k=v ...".
NS=''
new_ns() {
  local label=$1 secrets=${2:-dockerhub ghcr-acme} items s
  NS_COUNT=$((NS_COUNT + 1))
  NS="e2e-$PHASE-$SCEN-$NS_COUNT"
  NS=${NS:0:63}
  items=$(jq -n --arg n "$NS" --arg l "$label" --arg extra "${NS_LABELS:-}" '
    {apiVersion:"v1",kind:"Namespace",metadata:{name:$n,labels:(
      (if $l == "-" then {} else {"pullsecret-injector/inject":$l} end)
      + ([$extra | splits(" ") | select(length > 0) | split("=") | {key:.[0], value:.[1]}] | from_entries))}}')
  if [ "$secrets" != - ]; then
    for s in $secrets; do
      case $s in
        ghcr-acme) items+=$'\n'$(secret_json "$s" "$NS" "$DOCKER_CFG_GHCR") ;;
        *) items+=$'\n'$(secret_json "$s" "$NS" "$DOCKER_CFG_DOCKERHUB") ;;
      esac
    done
  fi
  SCEN_NS+=("$NS")
  jq -s '{apiVersion:"v1",kind:"List",items:.}' <<<"$items" | k create -f - >/dev/null 2>"$W/err" ||
    fail "creating namespace $NS failed: $(cat "$W/err")"
}

# pod_manifest NAME SPEC...: a Pod as JSON. SPEC items: image=IMG (a container), init=IMG (an
# initContainer), secret=NAME (an existing imagePullSecrets entry; empty allowed), label=K=V,
# generate (use NAME as metadata.generateName).
pod_manifest() {
  local name=$1 a filter=''
  shift
  local args=(--arg name "$name")
  local n=0
  for a in "$@"; do
    n=$((n + 1))
    case $a in
      image=*) args+=(--arg "v$n" "${a#image=}"); filter+="| .spec.containers += [{name: \"c\(.spec.containers|length)\", image: \$v$n}]" ;;
      init=*) args+=(--arg "v$n" "${a#init=}"); filter+="| .spec.initContainers += [{name: \"i\(.spec.initContainers|length)\", image: \$v$n}]" ;;
      secret=*) args+=(--arg "v$n" "${a#secret=}"); filter+="| .spec.imagePullSecrets += [{name: \$v$n}]" ;;
      label=*) a=${a#label=}; args+=(--arg "k$n" "${a%%=*}" --arg "v$n" "${a#*=}"); filter+="| .metadata.labels[\$k$n] = \$v$n" ;;
      generate) filter+='| .metadata |= ({generateName: .name} + del(.name))' ;;
      *) echo "pod_manifest: unknown spec $a" >&2; return 2 ;;
    esac
  done
  jq -n "${args[@]}" "{apiVersion: \"v1\", kind: \"Pod\", metadata: {name: \$name}, spec: {containers: []}} $filter | if .spec.initContainers == [] then del(.spec.initContainers) else . end"
}

# create_pod NS NAME SPEC...: kubectl create; sets POD (the stored name) and WARNINGS (kubectl's
# "Warning:" lines). CREATE_FLAGS adds flags (e.g. --dry-run=server); then OUT holds the JSON.
POD='' WARNINGS='' OUT=''
create_pod() {
  local ns=$1
  shift
  pod_manifest "$@" >"$W/pod.json" || fail "bad pod spec: $*" || return 1
  # shellcheck disable=SC2086
  if ! k create -n "$ns" -f "$W/pod.json" -o json ${CREATE_FLAGS:-} >"$W/out" 2>"$W/err"; then
    fail "kubectl create pod $1 in $ns failed: $(cat "$W/err")"; return 1
  fi
  OUT=$(cat "$W/out")
  POD=$(jq -r .metadata.name <<<"$OUT")
  WARNINGS=$(grep '^Warning:' "$W/err" || true)
}

# secrets_of NS POD: the stored Pod's imagePullSecrets names as a compact JSON array.
secrets_of() {
  k get pod -n "$1" "$2" -o json | jq -c '[.spec.imagePullSecrets[]? | .name // ""]'
}

# expect_secrets NS POD JSON_ARRAY: the Pod as read back from the API server.
expect_secrets() {
  local got
  got=$(secrets_of "$1" "$2" 2>"$W/err") || fail "kubectl get pod $2 -n $1 failed: $(cat "$W/err")" || return 1
  [ "$got" = "$3" ] || fail "pod $1/$2: imagePullSecrets $got, want $3"
}

# dry_secrets NS SPEC...: the imagePullSecrets a server-side dry-run Pod gets (nothing stored).
dry_secrets() {
  local ns=$1
  shift
  CREATE_FLAGS=--dry-run=server create_pod "$ns" "dry-$RANDOM" "$@" || return 1
  jq -c '[.spec.imagePullSecrets[]? | .name // ""]' <<<"$OUT"
}
dry_secrets_is() { # WANT NS SPEC...
  local want=$1 got
  shift
  got=$(dry_secrets "$@") && [ "$got" = "$want" ]
}

expect_no_warning() { [ -z "$WARNINGS" ] || fail "unexpected warnings: $WARNINGS"; }
expect_warning() { # REGEX
  grep -Eq "$1" <<<"$WARNINGS" || fail "no kubectl warning matching /$1/; warnings: ${WARNINGS:-none}"
}

# audit_annotations NS POD: annotations of the API server's audit event for the Pod's create.
audit_annotations() {
  jq -c --arg ns "$1" --arg pod "$2" 'select(.verb == "create" and .objectRef.resource == "pods"
    and .objectRef.namespace == $ns and .objectRef.name == $pod and .stage == "ResponseComplete")
    | .annotations // {}' "$DIR/audit.log" 2>/dev/null | tail -n 1
}

# wait_webhook_called: a dry-run Pod in the probe namespace reaches the injector (the API server
# has picked up the webhook configuration and can call the injector).
wait_webhook_called() {
  local before
  before=$(metric pullsecret_injector_admissions_total)
  probe() {
    CREATE_FLAGS=--dry-run=server create_pod e2e-probe "probe-$RANDOM" image=busybox >/dev/null 2>&1
    [ "$(metric pullsecret_injector_admissions_total)" != "$before" ]
  }
  wait_until 15 probe || fail "the API server did not call the injector within 15 s (admissions_total stayed $before)"
}

# ---------------------------------------------------------------- scenarios

# Per phase: the rules the generic scenarios expect, as chart values.
VALUES_RULES='  rules:
    - registry: docker.io
      secrets: [dockerhub]
    - registry: ghcr.io/acme
      secrets: [ghcr-acme]'

values_for() { # PHASE [SELECTION EXCLUDE_JSON]
  local selection=${2:-opt-in} exclude=${3:-'[kube-public]'}
  local common="webhook:
  failurePolicy: $E2E_FAILURE_POLICY
  timeoutSeconds: 5"
  case $1 in
    standalone) printf 'standalone: true\n%s\nconfig:\n  discovery: false\n  namespaces:\n    selection: %s\n    exclude: %s\n%s\n' "$common" "$selection" "$exclude" "$VALUES_RULES" ;;
    cluster) printf '%s\nconfig:\n  discovery: false\n  sync: false\n  secretAwareness: true\n  namespaces:\n    selection: %s\n    exclude: %s\n%s\n' "$common" "$selection" "$exclude" "$VALUES_RULES" ;;
    discovery) printf '%s\nconfig:\n  discovery: true\n  sync: false\n  secretAwareness: false\n  rules: []\n' "$common" ;;
    sync) printf '%s\nconfig:\n  discovery: true\n  sync: true\n  secretAwareness: false\n  rules: []\n' "$common" ;;
  esac
}

# a. opt-in: an enabled namespace gets the secrets; an unlabelled one does not.
scenario_opt_in() {
  local a
  new_ns enabled || return 1
  create_pod "$NS" web image=nginx image=ghcr.io/acme/app:1.0 || return 1
  expect_secrets "$NS" web '["dockerhub","ghcr-acme"]' || return 1
  expect_no_warning || return 1
  a=$(audit_annotations "$NS" web)
  grep -q 'pullsecret-injector.io/' <<<"$a" && grep -q dockerhub <<<"$a" ||
    fail "no auditAnnotation from the webhook naming dockerhub in the API server's audit event: ${a:-no event}" || return 1
  create_pod "$NS" public image=quay.io/prometheus/busybox || return 1
  expect_secrets "$NS" public '[]' || return 1
  new_ns - || return 1
  create_pod "$NS" web image=nginx || return 1
  expect_secrets "$NS" web '[]' || return 1
  expect_no_warning
}

# b. selection: all with exclusions, a =disabled and an =audit namespace (config hot reload).
scenario_selection_all() {
  local plain excluded disabled audit reloads
  new_ns - || return 1; plain=$NS
  new_ns - || return 1; excluded=$NS
  new_ns disabled || return 1; disabled=$NS
  new_ns audit || return 1; audit=$NS
  # The chart refuses selection=all below Kubernetes 1.21 (no kubernetes.io/metadata.name
  # label to exclude namespaces by name in the webhook); render as 1.21: on this 1.20 API
  # server the name exclusion is then enforced by the injector's own config alone.
  render "$PHASE-all" "$(values_for "$PHASE" all "[kube-public, $excluded]")" 1.21.0 || return 1
  SCEN_CLEANUP+=("restore_opt_in")
  reloads=$(metric "$RELOADS_OK")
  install_config "$PHASE-all"
  wait_until 5 reloads_changed "$reloads" ||
    fail "the injector did not reload its config within 5 s (config_reloads_total{result=\"success\"} stayed $reloads)" || return 1
  k apply -f "$W/chart-$PHASE-all/webhook-loopback.yaml" >/dev/null 2>"$W/err" || fail "apply webhook: $(cat "$W/err")" || return 1
  wait_until 10 dry_secrets_is '["dockerhub"]' "$plain" image=nginx ||
    fail "an unlabelled namespace did not get injected within 10 s of switching to selection: all" || return 1
  note "selection: all took effect after ${WAITED_MS} ms"
  create_pod "$plain" web image=nginx || return 1
  expect_secrets "$plain" web '["dockerhub"]' || return 1
  create_pod "$excluded" web image=nginx || return 1
  expect_secrets "$excluded" web '[]' || return 1
  create_pod "$disabled" web image=nginx || return 1
  expect_secrets "$disabled" web '[]' || return 1
  expect_no_warning || return 1
  create_pod "$audit" web image=nginx || return 1
  expect_secrets "$audit" web '[]' || return 1
  expect_warning dockerhub || return 1
  # Excluded by default (kube-system) and the injector's own namespace: only the injector's
  # own checks keep them out on 1.20.
  create_pod kube-system "e2e-$PHASE-web" image=nginx || return 1
  SCEN_CLEANUP+=("k delete pod -n kube-system e2e-$PHASE-web --wait=false")
  expect_secrets kube-system "e2e-$PHASE-web" '[]' || return 1
  create_pod "$OWN_NS" "e2e-$PHASE-web" image=nginx || return 1
  SCEN_CLEANUP+=("k delete pod -n $OWN_NS e2e-$PHASE-web --wait=false")
  expect_secrets "$OWN_NS" "e2e-$PHASE-web" '[]' || return 1
  restore_opt_in || return 1
  wait_until 10 dry_secrets_is '[]' "$plain" image=nginx ||
    fail "back to opt-in: an unlabelled namespace still got injected after 10 s"
}
restore_opt_in() {
  local reloads
  reloads=$(metric "$RELOADS_OK")
  cmp -s "$W/chart-$PHASE/config.yaml" "$W/config.yaml" && return 0
  install_config "$PHASE"
  k apply -f "$W/chart-$PHASE/webhook-loopback.yaml" >/dev/null 2>"$W/err" || fail "apply webhook: $(cat "$W/err")" || return 1
  wait_until 5 reloads_changed "$reloads" ||
    fail "the injector did not reload the opt-in config within 5 s"
}

# c. an =audit namespace: warnings, no change.
scenario_audit_ns() {
  local a
  new_ns audit || return 1
  create_pod "$NS" web image=nginx init=ghcr.io/acme/init:1 || return 1
  expect_secrets "$NS" web '[]' || return 1
  expect_warning 'dockerhub' || return 1
  expect_warning 'ghcr-acme' || return 1
  a=$(audit_annotations "$NS" web)
  grep -q 'audit.pullsecret-injector.io/' <<<"$a" ||
    fail "no auditAnnotation from the audit webhook in the API server's audit event: ${a:-no event}" || return 1
  note "kubectl printed: $(tr '\n' ' ' <<<"$WARNINGS")"
}

# d. a Pod labelled pullsecret-injector/inject=disabled is left alone.
scenario_pod_opt_out() {
  new_ns enabled || return 1
  create_pod "$NS" web image=nginx label=pullsecret-injector/inject=disabled || return 1
  expect_secrets "$NS" web '[]' || return 1
  expect_no_warning || return 1
  new_ns audit || return 1
  create_pod "$NS" web image=nginx label=pullsecret-injector/inject=disabled || return 1
  expect_secrets "$NS" web '[]' || return 1
  expect_no_warning
}

# e. existing entries kept in order, new ones appended in container order, no duplicates,
#    also when the API server reinvokes the injector after a later webhook added a container.
scenario_existing_and_reinvocation() {
  local a
  new_ns enabled || return 1
  create_pod "$NS" mixed image=nginx image=ghcr.io/acme/app secret=mine secret= secret=other || return 1
  expect_secrets "$NS" mixed '["mine","","other","dockerhub","ghcr-acme"]' || return 1
  create_pod "$NS" already image=nginx image=ghcr.io/acme/app secret=ghcr-acme || return 1
  expect_secrets "$NS" already '["ghcr-acme","dockerhub"]' || return 1
  create_pod "$NS" order image=nginx init=ghcr.io/acme/init || return 1
  expect_secrets "$NS" order '["ghcr-acme","dockerhub"]' || return 1
  # Reinvocation: a second webhook (tests/e2e/sidecar_webhook.py, configuration name sorted
  # after the injector's) adds a ghcr.io/acme container after the injector ran.
  NS_LABELS="e2e-sidecar=true" new_ns enabled || return 1
  SCEN_CLEANUP+=("k delete mutatingwebhookconfiguration zz-e2e-sidecar")
  jq -n --arg url "https://127.0.0.1:$SIDECAR_PORT/add-sidecar" --arg ca "$(base64 -w0 "$W/tls/ca.crt")" '
    {apiVersion: "admissionregistration.k8s.io/v1", kind: "MutatingWebhookConfiguration",
     metadata: {name: "zz-e2e-sidecar"},
     webhooks: [{name: "sidecar.e2e.test", admissionReviewVersions: ["v1"], sideEffects: "None",
       failurePolicy: "Fail", timeoutSeconds: 5, reinvocationPolicy: "Never",
       clientConfig: {url: $url, caBundle: $ca},
       rules: [{apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}],
       namespaceSelector: {matchLabels: {"e2e-sidecar": "true"}}}]}' | k apply -f - >/dev/null 2>"$W/err" ||
    fail "registering the sidecar webhook failed: $(cat "$W/err")" || return 1
  # shellcheck disable=SC2329 # called through wait_until
  sidecar_active() { CREATE_FLAGS=--dry-run=server create_pod "$1" probe image=nginx && jq -e '.spec.containers | length == 2' <<<"$OUT"; }
  wait_until 10 sidecar_active "$NS" ||
    fail "the sidecar webhook was not called within 10 s" || return 1
  create_pod "$NS" sidecar image=nginx || return 1
  [ "$(k get pod -n "$NS" sidecar -o json | jq -c '[.spec.containers[].name]')" = '["c0","e2e-sidecar"]' ] ||
    fail "the sidecar webhook did not add its container" || return 1
  expect_secrets "$NS" sidecar '["dockerhub","ghcr-acme"]' || return 1
  a=$(audit_annotations "$NS" sidecar)
  [ -n "$a" ] || a='{}'
  jq -e 'to_entries | any(.key | startswith("mutation.webhook.admission.k8s.io/round_1"))' <<<"$a" >/dev/null ||
    fail "the audit event shows no second round (reinvocation) of webhooks: ${a:-no event}" || return 1
  # The API server refuses to overwrite an audit annotation key set in an earlier round, so
  # the injector writes the second round's secrets under injected-secrets-after-N: both rounds
  # must be on record.
  recorded=$(jq -c '[to_entries[] | select(.key | startswith("inject.")) | select(.key | test("/injected-secrets")) | .value | split(",")[]] | sort' <<<"$a")
  [ "$recorded" = '["dockerhub","ghcr-acme"]' ] ||
    fail "audit annotations do not record both rounds' secrets: $(jq -c 'with_entries(select(.key | startswith("inject.")))' <<<"$a")" || return 1
  note "audit annotations after reinvocation: $(jq -c 'with_entries(select(.key | startswith("inject.")))' <<<"$a")"
}

# f. Pods named by metadata.generateName, as controllers create them.
scenario_generate_name() {
  new_ns enabled || return 1
  create_pod "$NS" web- generate image=nginx || return 1
  [[ $POD == web-?* ]] || fail "generated name '$POD' does not start with web-" || return 1
  expect_secrets "$NS" "$POD" '["dockerhub"]'
}

# g. server-side dry run: the injected Pod is returned, nothing is stored.
scenario_dry_run() {
  local got
  new_ns enabled || return 1
  CREATE_FLAGS=--dry-run=server create_pod "$NS" web image=nginx || return 1
  got=$(jq -c '[.spec.imagePullSecrets[]?.name]' <<<"$OUT")
  [ "$got" = '["dockerhub"]' ] || fail "dry-run Pod imagePullSecrets $got, want [\"dockerhub\"]" || return 1
  if k get pod -n "$NS" web >/dev/null 2>&1; then fail "the dry-run Pod was stored"; return 1; fi
  [ "$(k get pods -n "$NS" -o name | wc -l)" = 0 ] || fail "Pods exist after a dry run"
}

# h. failurePolicy with the injector stopped: Ignore admits the Pod unchanged, Fail refuses it.
scenario_failure_policy() {
  local t0 ms
  new_ns enabled || return 1
  injector_stop || return 1
  SCEN_CLEANUP+=("proc_alive $W/injector.pid pullsecret-injector || injector_start")
  t0=$(now_ms)
  if [ "$E2E_FAILURE_POLICY" = Ignore ]; then
    create_pod "$NS" web image=nginx || return 1
    ms=$(($(now_ms) - t0))
    expect_secrets "$NS" web '[]' || return 1
    note "Pod admitted without the webhook in ${ms} ms"
  else
    if create_pod "$NS" web image=nginx; then fail "failurePolicy Fail: a Pod was admitted while the injector was down"; return 1; fi
    grep -q 'failed calling webhook' <<<"$REASON" || fail "unexpected refusal: $REASON" || return 1
  fi
  injector_start || return 1
  wait_until 10 dry_secrets_is '["dockerhub"]' "$NS" image=nginx ||
    fail "after restarting the injector, Pods are not injected again within 10 s"
}

# i. API server restart (etcd kept): the injector survives; injection and watches recover.
scenario_apiserver_restart() {
  local pid t0
  pid=$(cat "$W/injector.pid")
  if [ "$PHASE" = sync ]; then
    create_source "pass-before-restart" || return 1
  fi
  # Sample /readyz every 100 ms meanwhile: does the injector stay ready while the API is away?
  (while :; do
    if readyz; then echo "$(now_ms) 1"; else echo "$(now_ms) 0"; fi
    sleep 0.1
  done) >"$W/readyz-samples" 2>/dev/null &
  local sampler=$! restarted_at
  SCEN_CLEANUP+=("kill $sampler")
  t0=$(now_ms)
  "$HERE/kube-up.sh" --apiserver-only >"$W/restart.log" 2>&1 || fail "API server restart failed: $(tail -n 5 "$W/restart.log")" || return 1
  restarted_at=$(now_ms)
  note "API server down and back in $((restarted_at - t0)) ms"
  proc_alive "$W/injector.pid" pullsecret-injector && [ "$(cat "$W/injector.pid")" = "$pid" ] ||
    fail "the injector died while the API server restarted" || return 1
  livez || fail "/livez is not ok after the API server restart" || return 1
  wait_until 20 readyz || fail "/readyz not ok within 20 s of the API server restart" || return 1
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  note "injector /readyz: $(awk '$2 == 0 { n++ } END { printf "%d not-ready samples of %d (100 ms apart)", n, NR }' "$W/readyz-samples"); ready $(($(now_ms) - restarted_at)) ms after the API server was"
  case $PHASE in
    standalone | cluster)
      new_ns enabled || return 1
      wait_until 10 dry_secrets_is '["dockerhub"]' "$NS" image=nginx || fail "no injection within 10 s after the restart" || return 1
      note "injection worked $(($(now_ms) - restarted_at)) ms after the API server was back"
      create_pod "$NS" web image=nginx || return 1
      expect_secrets "$NS" web '["dockerhub"]' || return 1
      ;;
  esac
  case $PHASE in
    cluster)
      # The Secret watch recovered: a Secret created after the restart is seen.
      new_ns enabled dockerhub || return 1
      k create -f - <<<"$(secret_json ghcr-acme "$NS" "$DOCKER_CFG_GHCR")" >/dev/null || fail "create secret" || return 1
      t0=$(now_ms)
      wait_until 20 dry_secrets_is '["ghcr-acme"]' "$NS" image=ghcr.io/acme/app ||
        fail "a Secret created after the API server restart was not seen within 20 s (watch not recovered?)" || return 1
      note "Secret watch caught up $(($(now_ms) - t0)) ms after the Secret was created"
      ;;
    sync)
      # The namespace watch recovered: a namespace labelled after the restart gets its copy.
      new_ns enabled - || return 1
      wait_until 20 copy_matches_source "$NS" ||
        fail "a namespace created after the restart got no copy within 20 s: $(copy_summary "$NS")" || return 1
      note "copy appeared ${WAITED_MS} ms after the namespace was created"
      create_pod "$NS" web image=nginx || return 1
      expect_secrets "$NS" web '["regcred"]' || return 1
      ;;
  esac
}

# j. cluster mode: secret awareness (sync off): a missing Secret is not referenced, with a warning.
scenario_secret_awareness() {
  new_ns enabled dockerhub || return 1
  create_pod "$NS" web image=nginx image=ghcr.io/acme/app || return 1
  expect_secrets "$NS" web '["dockerhub"]' || return 1
  expect_warning 'ghcr-acme' || return 1
  k create -f - <<<"$(secret_json ghcr-acme "$NS" "$DOCKER_CFG_GHCR")" >/dev/null 2>"$W/err" || fail "create secret: $(cat "$W/err")" || return 1
  wait_until 5 dry_secrets_is '["dockerhub","ghcr-acme"]' "$NS" image=nginx image=ghcr.io/acme/app ||
    fail "a Secret created in the namespace was not referenced within 5 s"
}

# j. cluster mode: the audit subcommand against the live cluster.
scenario_audit_cli() {
  local out entry
  new_ns - dockerhub || return 1
  create_pod "$NS" legacy image=nginx image=ghcr.io/acme/app || return 1
  expect_secrets "$NS" legacy '[]' || return 1
  k label namespace "$NS" pullsecret-injector/inject=enabled >/dev/null || fail "label namespace" || return 1
  out=$W/audit-cli.json
  # The injector's own namespace (discovery sources) comes from POD_NAMESPACE.
  POD_NAMESPACE=$OWN_NS timeout 30 "$BIN" audit -A -o json --kubeconfig "$ADMIN" --config "$W/config.yaml" \
    >"$out" 2>"$W/audit-cli.err" || fail "pullsecret-injector audit -A -o json failed (exit $?): $(tail -n 5 "$W/audit-cli.err")" || return 1
  jq -e . "$out" >/dev/null 2>&1 || fail "audit -o json output is not JSON: $(head -c 300 "$out")" || return 1
  # Tolerant of the exact shape: find the object for this Pod, then the exists flag next to
  # each secret name.
  entry=$(jq -c --arg ns "$NS" --arg pod legacy \
    '[.. | objects | select((.namespace? // "") == $ns and ((.pod? // .name? // "") == $pod))][0] // empty' "$out")
  [ -n "$entry" ] || fail "no entry for Pod $NS/legacy in the audit output: $(head -c 400 "$out")" || return 1
  exists_of() {
    jq -c --arg s "$1" '[.. | objects | select(any(.[]?; . == $s)) | to_entries[]
      | select(.key | test("exist"; "i")) | .value][0]' <<<"$entry"
  }
  [ "$(exists_of dockerhub)" = true ] || fail "audit: dockerhub should be listed as existing; entry: $entry" || return 1
  [ "$(exists_of ghcr-acme)" = false ] || fail "audit: ghcr-acme should be listed as missing; entry: $entry" || return 1
  POD_NAMESPACE=$OWN_NS timeout 30 "$BIN" audit -n "$NS" --kubeconfig "$ADMIN" --config "$W/config.yaml" \
    >"$W/audit-cli.txt" 2>&1 || fail "pullsecret-injector audit -n $NS failed: $(tail -n 5 "$W/audit-cli.txt")" || return 1
  grep -q legacy "$W/audit-cli.txt" || fail "audit table does not list Pod legacy: $(head -n 5 "$W/audit-cli.txt")"
}

# Source credential in the injector's namespace, for discovery and sync.
create_source() { # PASSWORD
  k delete secret regcred -n "$OWN_NS" --ignore-not-found >/dev/null 2>&1 || true
  k create secret docker-registry regcred --docker-server=https://index.docker.io/v1/ \
    --docker-username=u --docker-password="$1" -n "$OWN_NS" >/dev/null 2>"$W/err" ||
    fail "create source secret: $(cat "$W/err")" || return 1
  k label secret regcred pullsecret-injector/source=true -n "$OWN_NS" >/dev/null 2>"$W/err" ||
    fail "label source secret: $(cat "$W/err")" || return 1
  SCEN_CLEANUP+=("k delete secret regcred -n $OWN_NS --ignore-not-found")
}
source_data() { k get secret regcred -n "$OWN_NS" -o json | jq -c .data; }

# copy_matches_source NS: NS holds a managed copy of regcred with the source's data.
copy_matches_source() {
  local copy src
  copy=$(k get secret regcred -n "$1" -o json 2>/dev/null) || return 1
  src=$(source_data) || return 1
  jq -e --argjson src "$src" '.data == $src
    and .metadata.labels["app.kubernetes.io/managed-by"] == "pullsecret-injector"
    and .metadata.annotations["pullsecret-injector/source"] == "pullsecret-injector/regcred"
    and .type == "kubernetes.io/dockerconfigjson"' <<<"$copy" >/dev/null
}
# copy_summary NS: what NS holds under the name regcred, for failure messages.
copy_summary() {
  local copy src
  copy=$(k get secret regcred -n "$1" -o json 2>/dev/null) || { echo "no Secret regcred"; return 0; }
  src=$(source_data 2>/dev/null || echo null)
  jq -c --argjson src "$src" '{labels: .metadata.labels, annotations: .metadata.annotations, type,
    dataEqualsSource: (.data == $src)}' <<<"$copy"
}
copies_match() { local ns; for ns; do copy_matches_source "$ns" || return 1; done; }
no_copy() { local ns; for ns; do ! k get secret regcred -n "$ns" >/dev/null 2>&1 || return 1; done; }

# j. discovery: a labelled dockerconfigjson Secret in the injector's namespace becomes a rule.
scenario_discovery() {
  new_ns enabled - || return 1
  create_source "pass-discovery" || return 1
  wait_until 5 dry_secrets_is '["regcred"]' "$NS" image=nginx ||
    fail "a Pod with image nginx did not get regcred within 5 s of labelling the source: $(dry_secrets "$NS" image=nginx)" || return 1
  note "discovered after ${WAITED_MS} ms"
  create_pod "$NS" web image=nginx || return 1
  expect_secrets "$NS" web '["regcred"]' || return 1
  create_pod "$NS" other image=ghcr.io/acme/app || return 1
  expect_secrets "$NS" other '[]' || return 1
  k label secret regcred pullsecret-injector/source- -n "$OWN_NS" >/dev/null || fail "unlabel source" || return 1
  wait_until 5 dry_secrets_is '[]' "$NS" image=nginx ||
    fail "removing the source label did not remove the discovered rule within 5 s"
}

# j. sync: copies in every selected namespace, updates, removals, conflicts.
scenario_sync() {
  local a b n c conflict_data c0 src_before ms
  new_ns enabled - || return 1; a=$NS
  new_ns enabled - || return 1; b=$NS
  new_ns - - || return 1; n=$NS
  new_ns enabled - || return 1; c=$NS
  # A Secret named like the source that the injector does not manage: never touched.
  conflict_data=$(printf '{"auths":{"example.org":{"auth":"%s"}}}' "$(printf 'x:mine' | base64 -w0)" | base64 -w0)
  k create -f - <<<"$(secret_json regcred "$c" "$conflict_data")" >/dev/null 2>"$W/err" || fail "create conflicting secret: $(cat "$W/err")" || return 1
  c0=$(metric pullsecret_injector_sync_conflicts_total)

  create_source "pass-sync-1" || return 1
  wait_until 2 copies_match "$a" "$b" ||
    fail "no managed copy of regcred (labels, annotation, data) in both enabled namespaces within 2 s: $a: $(copy_summary "$a"); $b: $(copy_summary "$b")" || return 1
  note "copies in enabled namespaces after ${WAITED_MS} ms"
  no_copy "$n" || fail "an unlabelled namespace got a copy" || return 1
  create_pod "$a" web image=nginx || return 1
  expect_secrets "$a" web '["regcred"]' || return 1

  k label namespace "$n" pullsecret-injector/inject=enabled >/dev/null || fail "label namespace" || return 1
  wait_until 2 copy_matches_source "$n" || fail "a newly labelled namespace got no copy within 2 s" || return 1
  note "newly labelled namespace got its copy after ${WAITED_MS} ms"

  src_before=$(source_data)
  local patch
  patch=$(k create secret docker-registry regcred --docker-server=https://index.docker.io/v1/ --docker-username=u \
    --docker-password=pass-sync-2 -n "$OWN_NS" --dry-run=client -o json | jq -c '{data: .data}')
  k patch secret regcred -n "$OWN_NS" --type merge --patch "$patch" >/dev/null 2>"$W/err" ||
    fail "rotate source: $(cat "$W/err")" || return 1
  [ "$(source_data)" != "$src_before" ] || fail "the source did not change" || return 1
  wait_until 5 copies_match "$a" "$b" "$n" ||
    fail "copies not updated within 5 s of rotating the source: $a: $(copy_summary "$a")" || return 1
  note "rotation reached every copy after ${WAITED_MS} ms"

  wait_until 5 metric_above pullsecret_injector_sync_conflicts_total "$c0" ||
    fail "pullsecret_injector_sync_conflicts_total did not increase (still $(metric pullsecret_injector_sync_conflicts_total))" || return 1
  [ "$(k get secret regcred -n "$c" -o json | jq -r '.data[".dockerconfigjson"]')" = "$conflict_data" ] ||
    fail "the unmanaged Secret $c/regcred was overwritten" || return 1
  [ "$(k get secret regcred -n "$c" -o json | jq -r '.metadata.labels["app.kubernetes.io/managed-by"] // "none"')" = none ] ||
    fail "the unmanaged Secret $c/regcred got the managed-by label" || return 1

  k label namespace "$b" pullsecret-injector/inject- >/dev/null || fail "unlabel namespace" || return 1
  wait_until 5 no_copy "$b" || fail "the copy in a namespace whose label was removed is still there after 5 s" || return 1
  note "copy removed from an unlabelled namespace after ${WAITED_MS} ms"

  k delete secret regcred -n "$OWN_NS" >/dev/null || fail "delete source" || return 1
  wait_until 5 no_copy "$a" "$n" || fail "copies still there 5 s after deleting the source" || return 1
  note "copies removed after ${WAITED_MS} ms"
  [ "$(k get secret regcred -n "$c" -o json 2>/dev/null | jq -r '.data[".dockerconfigjson"]')" = "$conflict_data" ] ||
    fail "the unmanaged Secret $c/regcred was deleted or changed when the source was deleted"
}

# j. RBAC from the chart for this phase's feature set, checked as the injector's identity.
scenario_rbac() {
  local bad=() verb res want got ns
  check() { # WANT VERB RESOURCE [NS|-A]
    want=$1 verb=$2 res=$3 ns=${4:--A}
    if [ "$ns" = -A ]; then got=$(k auth can-i "$verb" "$res" -A --as="$SA" 2>/dev/null || true)
    else got=$(k auth can-i "$verb" "$res" -n "$ns" --as="$SA" 2>/dev/null || true); fi
    [ "$got" = "$want" ] || bad+=("can-i $verb $res ${ns}: $got, want $want")
  }
  check no create pods default
  check no patch mutatingwebhookconfigurations
  check no create rolebindings "$OWN_NS"
  check no get configmaps "$OWN_NS"
  case $PHASE in
    standalone)
      check no list namespaces; check no get secrets "$OWN_NS"; check no list secrets ;;
    cluster) # secretAwareness, no discovery, no sync
      check yes list namespaces; check yes watch namespaces
      check yes list secrets; check yes watch secrets
      check no get secrets default; check no create secrets default; check no delete secrets default
      check no get secrets "$OWN_NS" ;;
    discovery) # discovery, no awareness, no sync
      check yes list namespaces; check yes watch namespaces
      check no get secrets "$OWN_NS"; check yes list secrets "$OWN_NS"; check yes watch secrets "$OWN_NS"
      check no list secrets; check no get secrets default; check no create secrets default
      check no create secrets "$OWN_NS" ;;
    sync)
      check yes list namespaces; check yes list secrets "$OWN_NS"; check no get secrets "$OWN_NS"
      check yes list secrets; check yes watch secrets; check no patch secrets default
      check yes create secrets default; check yes update secrets default; check yes delete secrets default ;;
  esac
  # The injector's own kubeconfig (not impersonation): reading a Secret elsewhere.
  if [ "$PHASE" != sync ] && kubectl --kubeconfig "$DIR/injector.kubeconfig" --cache-dir "$W/kube-cache" \
      get secret dockerhub -n e2e-probe >/dev/null 2>&1; then
    bad+=("injector.kubeconfig can read Secret e2e-probe/dockerhub")
  fi
  [ ${#bad[@]} -eq 0 ] || fail "$(IFS=';'; echo "${bad[*]}")"
}

# Secret values never appear in the injector's log.
scenario_no_secrets_in_log() {
  local s found=()
  for s in hub-e2e-pass ghcr-e2e-pass pass-sync-1 pass-sync-2 pass-discovery pass-before-restart \
      "$DOCKER_CFG_DOCKERHUB" "$(printf 'u:pass-sync-1' | base64 -w0)"; do
    grep -qF -- "$s" "$LOG" && found+=("$s")
  done
  [ ${#found[@]} -eq 0 ] || fail "secret material in the injector log: ${found[*]}"
}

# ---------------------------------------------------------------- phases

PHASE=''
run_phase() {
  PHASE=$1 MODE=cluster
  [ "$PHASE" = standalone ] && MODE=standalone
  echo "=== phase $PHASE ($(if [ "$MODE" = standalone ]; then echo --standalone; else echo "cluster mode, $DIR/injector.kubeconfig"; fi); failurePolicy $E2E_FAILURE_POLICY)"
  local ids
  case $PHASE in
    standalone) ids="a b c d e f g h i rbac" ;;
    cluster) ids="a b c d e f g h secret-awareness audit-cli i rbac" ;;
    discovery) ids="discovery rbac" ;;
    sync) ids="sync i rbac no-secrets-in-log" ;;
  esac
  if ! setup_phase; then
    echo "FAIL [$PHASE] setup: $REASON"
    echo "     --- injector log (last 30 lines):"; tail -n 30 "$LOG" 2>/dev/null | strip_ansi | sed 's/^/     | /'
    FAILED+=("$PHASE/setup: ${REASON%%$'\n'*}")
    local id
    for id in $ids; do
      if [ "$id" = rbac ]; then run_scenario rbac "chart RBAC for this feature set (kubectl auth can-i --as the injector)" scenario_rbac
      elif selected_scenario "$id"; then echo "SKIP [$PHASE] $id (phase setup failed)"; SKIPPED+=("$PHASE/$id"); fi
    done
    return 0
  fi
  local id
  for id in $ids; do
    case $id in
      a) run_scenario a-opt-in "opt-in: enabled namespace injected, unlabelled not" scenario_opt_in ;;
      b) run_scenario b-selection-all "selection: all with exclusions, =disabled and =audit namespaces (hot reload)" scenario_selection_all ;;
      c) run_scenario c-audit-namespace "=audit namespace: kubectl warnings, Pod unchanged" scenario_audit_ns ;;
      d) run_scenario d-pod-opt-out "Pod labelled inject=disabled unchanged" scenario_pod_opt_out ;;
      e) run_scenario e-existing-reinvocation "existing secrets kept in order, appended, no duplicates on reinvocation" scenario_existing_and_reinvocation ;;
      f) run_scenario f-generate-name "generateName Pods injected" scenario_generate_name ;;
      g) run_scenario g-dry-run "--dry-run=server returns the injected Pod and stores nothing" scenario_dry_run ;;
      h) run_scenario h-failure-policy "failurePolicy $E2E_FAILURE_POLICY with the injector stopped, then restarted" scenario_failure_policy ;;
      i) run_scenario i-apiserver-restart "API server restart (etcd kept): injector survives, injection and watches recover" scenario_apiserver_restart ;;
      secret-awareness) run_scenario secret-awareness "a missing Secret is not referenced, with a warning" scenario_secret_awareness ;;
      audit-cli) run_scenario audit-cli "pullsecret-injector audit -A -o json against the cluster" scenario_audit_cli ;;
      discovery) run_scenario discovery "labelled source Secret becomes a rule (regcred for nginx)" scenario_discovery ;;
      sync) run_scenario sync "copies created, rotated, removed; unmanaged Secret never touched" scenario_sync ;;
      rbac) run_scenario rbac "chart RBAC for this feature set (kubectl auth can-i --as the injector)" scenario_rbac ;;
      no-secrets-in-log) run_scenario no-secrets-in-log "no secret material in the injector's log" scenario_no_secrets_in_log ;;
    esac
  done
}

setup_phase() {
  SCEN=setup
  render "$PHASE" "$(values_for "$PHASE")" || return 1
  injector_stop || true
  install_config "$PHASE"
  apply_chart "$PHASE" || return 1
  injector_start || return 1
  wait_webhook_called
}

# The probe namespace (enabled, with the Secret the static rules name): wait_webhook_called.
{ jq -n '{apiVersion:"v1",kind:"Namespace",metadata:{name:"e2e-probe",labels:{"pullsecret-injector/inject":"enabled"}}}'
  secret_json dockerhub e2e-probe "$DOCKER_CFG_DOCKERHUB"; } |
  jq -s '{apiVersion:"v1",kind:"List",items:.}' | k create -f - >/dev/null

for phase in standalone cluster discovery sync; do
  selected_phase "$phase" && run_phase "$phase"
done

echo "=== summary: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped in $((SECONDS - START)) s (binary $BIN)"
for f in "${FAILED[@]}"; do echo "  FAIL $f"; done
[ ${#FAILED[@]} -eq 0 ]
