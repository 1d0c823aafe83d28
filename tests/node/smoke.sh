#!/usr/bin/env bash
# Proves the one-node harness end to end, each step asserted from what the kubelet and the API
# server report (one PASS/FAIL line per check):
#   1. a Pod with image 127.0.0.1:$REG_PORT/private/app:1, imagePullPolicy Always and no
#      imagePullSecrets ends in ErrImagePull/ImagePullBackOff, with the registry's 401 in its events;
#   2. the same Pod with a `kubectl create secret docker-registry` Secret in imagePullSecrets
#      pulls the image and runs (and answers HTTP on its Pod IP);
#   3. `helm install` of charts/pullsecret-injector in cluster mode, tls.source=helm,
#      config.sync and config.discovery on, 2 replicas, its image from the private registry
#      (the chart's imagePullSecrets): both Pods Running and Ready, running the pushed digest as
#      uid 65532 on a read-only root filesystem;
#   4. a docker-registry Secret `regcred` in the injector's namespace labelled
#      pullsecret-injector/source=true, an app namespace labelled pullsecret-injector/inject=enabled:
#      the injector copies regcred there, a Pod created there without imagePullSecrets is stored
#      with [regcred] (the webhook, called through its Service) and runs; the same Pod in an
#      unlabelled namespace gets nothing and stays in ErrImagePull/ImagePullBackOff.
# imagePullPolicy is Always everywhere: once the image is on the node, IfNotPresent would run a
# Pod without any credential from the node's cache, a false pass.
#
# Usage: tests/node/smoke.sh BINARY     BINARY: the static pullsecret-injector
#                                       (scripts/build-static.sh); its image is built and pushed
# Env:   DIR, REG_PORT (tests/node/lib.sh); HELM (default: tests/chart/tools.sh installs one);
#        CHART (charts/pullsecret-injector; another copy of the chart, e.g. one matching BINARY)
# Needs: registry-up.sh and up.sh. Re-runnable: it deletes its namespaces and release first.
# Exit status: 0 when every check passed.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${1:-}
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "usage: $0 BINARY (a static pullsecret-injector)" >&2; exit 2; }
reg_creds
APP=$REG/private/app:1
REL=pullsecret-injector          # release name = namespace = the chart's fullname
NS_REG=smoke-registry            # steps 1-2
NS_ON=smoke-injected             # step 4, labelled pullsecret-injector/inject=enabled
NS_OFF=smoke-unlabelled          # step 4, no label
CHART=${CHART:-$ROOT/charts/pullsecret-injector}
W=$DIR/smoke
mkdir -p "$W"
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
# check DESC CMD...: PASS or FAIL by CMD's status.
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
# gate: stop here if anything failed (later steps build on earlier ones).
gate() { [ "$FAILS" = 0 ] || { echo "smoke.sh: $FAILS check(s) failed; stopping after: $*"; exit 1; }; }

# pod NS NAME [SECRET...]: a Pod that must pull $APP, with exactly these imagePullSecrets.
pod() {
  local ns=$1 name=$2 ips=""
  shift 2
  [ $# = 0 ] || ips="  imagePullSecrets: [$(printf '{name: %s}, ' "$@" | sed 's/, $//')]"
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $ns, labels: {app: smoke}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  dnsPolicy: Default   # no cluster DNS here
$ips
  containers:
    - name: app
      image: "$APP"
      imagePullPolicy: Always
      ports: [{containerPort: 8080}]
YAML
}
# state NS NAME: Running when the Pod's phase is Running, else the first container's waiting
# reason (ErrImagePull, ImagePullBackOff, ContainerCreating...), else the phase.
state() {
  local s
  s=$(kc -n "$1" get pod "$2" -o jsonpath='{.status.phase}/{.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null) || s=""
  case $s in Running/*) echo Running ;; */?*) echo "${s#*/}" ;; *) echo "${s%/}" ;; esac
}
# await NS NAME WANT TIMEOUT: WANT is Running or PullFail (ErrImagePull|ImagePullBackOff).
# Prints the last state seen; status 0 when WANT was reached.
await() {
  local s="" deadline=$((SECONDS + $4))
  while [ "$SECONDS" -lt "$deadline" ]; do
    s=$(state "$1" "$2")
    case $3/$s in Running/Running | PullFail/ErrImagePull | PullFail/ImagePullBackOff) echo "$s"; return 0 ;; esac
    sleep 0.5
  done
  echo "${s:-none}"
  return 1
}
events() {
  kc -n "$1" get events --field-selector "involvedObject.name=$2" \
    -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null || true
}
# event_has NS NAME REGEX TIMEOUT: the Pod's events match REGEX (events lag a little).
event_has() {
  local deadline=$((SECONDS + $4))
  while ! events "$1" "$2" | grep -Eq "$3"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
diag() { # diag NS NAME: what the kubelet says about a Pod that did not do what was expected
  echo "--- kubectl describe pod $2 -n $1 (tail):"
  kc -n "$1" describe pod "$2" 2>&1 | tail -n 15 | sed 's/^/    /'
}
pull_failed() { [ "$1" = ErrImagePull ] || [ "$1" = ImagePullBackOff ]; }
secrets_of() { kc -n "$1" get pod "$2" -o jsonpath='{.spec.imagePullSecrets[*].name}'; }
new_ns() { # new_ns NS: a fresh namespace whose default ServiceAccount exists
  kc create namespace "$1" >/dev/null
  wait_until 60 "ServiceAccount default in $1" "$DIR/controller-manager.log" kc -n "$1" get serviceaccount default
}

# --- 0. clean slate: remove what a previous smoke run left
T=$EPOCHREALTIME
if [ -z "${HELM:-}" ]; then
  # shellcheck source=tests/chart/tools.sh
  source "$ROOT/tests/chart/tools.sh"
  tools_install --no-checkov >/dev/null
fi
HELM_KC=(--kubeconfig "$ADMIN_KUBECONFIG")
"$HELM" "${HELM_KC[@]}" status "$REL" -n "$REL" >/dev/null 2>&1 &&
  "$HELM" "${HELM_KC[@]}" uninstall "$REL" -n "$REL" --wait --timeout 60s >/dev/null
kc delete namespace "$REL" "$NS_REG" "$NS_ON" "$NS_OFF" --ignore-not-found --wait=true --timeout=90s >/dev/null
IMG=$("$NODE_LIB_DIR/injector-image.sh" "$BIN" 2>"$W/injector-image.err") ||
  { cat "$W/injector-image.err" >&2; echo "smoke.sh: could not build/push the injector image" >&2; exit 1; }
cat "$W/injector-image.err"
log "setup done ($(since "$T")s: helm ready, namespaces clean, injector image pushed)"

# --- 1. no credentials -> the kubelet's pull fails with the registry's 401
T=$EPOCHREALTIME
new_ns "$NS_REG"
pod "$NS_REG" nosecret
s=$(await "$NS_REG" nosecret PullFail 90) || true
check "1. Pod without imagePullSecrets pulling $APP ends in $s ($(since "$T")s)" pull_failed "$s"
if event_has "$NS_REG" nosecret '401 Unauthorized' 30; then
  pass "1. its kubelet event names the registry's 401 Unauthorized"
  events "$NS_REG" nosecret | grep -m1 -o 'pulling from host.*401 Unauthorized' | sed 's/^/     event: .../'
else
  fail "1. its kubelet event names the registry's 401 Unauthorized"
  diag "$NS_REG" nosecret
fi

# --- 2. kubectl create secret docker-registry + imagePullSecrets -> Running
T=$EPOCHREALTIME
kc -n "$NS_REG" create secret docker-registry regcred --docker-server="$REG" \
  --docker-username="$REG_USER" --docker-password="$REG_PASS" >/dev/null
pod "$NS_REG" withsecret regcred
s=$(await "$NS_REG" withsecret Running 120) || true
if [ "$s" = Running ]; then
  pass "2. the same Pod with imagePullSecrets [regcred] is Running ($(since "$T")s)"
else
  fail "2. the same Pod with imagePullSecrets [regcred] is Running (got $s)"
  diag "$NS_REG" withsecret
fi
check "2. its kubelet event: Successfully pulled image \"$APP\"" \
  event_has "$NS_REG" withsecret "Successfully pulled image \"$APP\"" 20
ip=$(kc -n "$NS_REG" get pod withsecret -o jsonpath='{.status.podIP}')
body=$(curl -s --max-time 5 "http://$ip:8080/" || true)
check "2. the container answers on its Pod IP $ip:8080 ('$body')" [ "$body" = "hello from private/app:1" ]
gate "the registry and the kubelet's pull"

# --- 3. helm install of the chart, cluster mode, its image from the private registry
T=$EPOCHREALTIME
kc create namespace "$REL" >/dev/null
# The injector's own pull credential (chart value imagePullSecrets). Not labelled as a source.
kc -n "$REL" create secret docker-registry injector-pull --docker-server="$REG" \
  --docker-username="$REG_USER" --docker-password="$REG_PASS" >/dev/null
cat >"$W/values.yaml" <<YAML
replicaCount: 2
image:
  repository: "${IMG%:*}"
  tag: "${IMG##*:}"
  pullPolicy: Always
imagePullSecrets: [{name: injector-pull}]
standalone: false
tls: {source: helm}
config:
  rules: []
  discovery: true
  sync: true
# Pod creation in opted-in namespaces fails loudly if the API server cannot call the webhook.
webhook: {failurePolicy: Fail}
YAML
# No --wait: the loop below gives the same answer (every Pod Running and Ready) but stops at the
# first crash instead of waiting for helm's timeout.
if "$HELM" "${HELM_KC[@]}" install "$REL" "$CHART" -n "$REL" -f "$W/values.yaml" >"$W/helm-install.out" 2>&1; then
  pass "3. helm install $REL $CHART (cluster mode, tls.source=helm, sync + discovery, 2 replicas) ($(since "$T")s)"
else
  fail "3. helm install $REL $CHART"
  tail -n 20 "$W/helm-install.out" | sed 's/^/    /'
  gate "helm install"
fi
SEL=app.kubernetes.io/name=pullsecret-injector
pods_status() { # one line per injector Pod: NAME PHASE/READY restarts=N WAITING-REASON
  kc -n "$REL" get pods -l "$SEL" -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}/{.status.conditions[?(@.type=="Ready")].status} restarts={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason}{"\n"}{end}' 2>/dev/null || true
}
deadline=$((SECONDS + 180)) st=""
while [ "$SECONDS" -lt "$deadline" ]; do
  st=$(pods_status)
  [ "$(grep -c ' Running/True ' <<<"$st")" = 2 ] && break
  # A crash (or a config error) will not heal: stop waiting.
  grep -Eq 'restarts=[1-9]|CrashLoopBackOff|CreateContainerConfigError|InvalidImageName' <<<"$st" && break
  sleep 0.5
done
if [ "$(grep -c ' Running/True ' <<<"$st")" = 2 ]; then
  pass "3. both injector Pods Running and Ready ($(since "$T")s after helm install)"
else
  fail "3. both injector Pods Running and Ready"
  while IFS= read -r l; do echo "    $l"; done <<<"$st"
  for p in $(kc -n "$REL" get pods -l "$SEL" -o name); do
    diag "$REL" "${p#pod/}"
    # The kubelet's log files of every run of the container (a crashed run's too), CRI format.
    for f in /var/log/pods/"${REL}_${p#pod/}"_*/*/*.log; do
      [ -f "$f" ] && tail -n 6 "$f" | cut -d' ' -f4- | sed "s|^|    log $(basename "$f"): |"
    done
  done
  gate "the injector Pods"
fi
digest=$(skopeo inspect --cert-dir "$DIR/registry/certs" --creds "$REG_USER:$REG_PASS" --format '{{.Digest}}' "docker://$IMG")
ids=$(kc -n "$REL" get pods -l "$SEL" -o jsonpath='{range .items[*]}{.status.containerStatuses[0].imageID}{"\n"}{end}')
check "3. both run $IMG@${digest:0:19}... pulled from the private registry" \
  [ "$(grep -c "@$digest\$" <<<"$ids")" = 2 ]
# From the host: the container's process (containerd task) runs as the image's numeric user on a
# read-only root filesystem, the chart's securityContext on the Dockerfile's layout.
cid=$(kc -n "$REL" get pods -l "$SEL" -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')
cid=${cid#containerd://}
pid=$(ctrd tasks ls 2>/dev/null | awk -v id="$cid" '$1 == id { print $2 }')
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
rootopt=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" 2>/dev/null | head -n 1)
uid_ro() { [ "$uid" = 65532 ] && [ "${rootopt%%,*}" = ro ]; }
check "3. the injector process (host pid ${pid:-?}) runs as uid ${uid:-?} on a root mounted ${rootopt%%,*}" uid_ro
gate "the chart install"

# --- 4. the README's story: one labelled Secret, one labelled namespace, no manifest edited
T=$EPOCHREALTIME
new_ns "$NS_ON"
new_ns "$NS_OFF"
kc -n "$REL" create secret docker-registry regcred --docker-server="$REG" \
  --docker-username="$REG_USER" --docker-password="$REG_PASS" >/dev/null
kc -n "$REL" label secret regcred pullsecret-injector/source=true >/dev/null
kc label namespace "$NS_ON" pullsecret-injector/inject=enabled >/dev/null
synced() { kc -n "$NS_ON" get secret regcred; }
if wait_until 60 "regcred copied into $NS_ON" - synced; then
  pass "4. config.sync copied regcred into the labelled namespace $NS_ON ($(since "$T")s)"
else
  fail "4. config.sync copied regcred into the labelled namespace $NS_ON"
  kc -n "$REL" logs -l "$SEL" --tail 10 2>&1 | sed 's/^/    log: /'
fi
check "4. and not into the unlabelled namespace $NS_OFF" \
  test -z "$(kc -n "$NS_OFF" get secret regcred -o name --ignore-not-found)"
T=$EPOCHREALTIME
pod "$NS_ON" app
got=$(secrets_of "$NS_ON" app)
check "4. a Pod created without imagePullSecrets in $NS_ON is stored with [$got]" [ "$got" = regcred ]
# The API server's audit log (Metadata level for Pods) records which webhook mutated the Pod,
# and the injector's own audit annotation.
audited() {
  grep '"verb":"create"' "$DIR/audit.log" | grep "\"namespace\":\"$NS_ON\",\"name\":\"app\"" |
    grep -F '\"webhook\":\"inject.pullsecret-injector.io\",\"mutated\":true' | grep -qF 'injected-secrets":"regcred"'
}
check "4. the audit log: webhook inject.pullsecret-injector.io (via its Service) mutated it, injected-secrets=regcred" \
  wait_until 10 "the Pod's audit event" - audited
s=$(await "$NS_ON" app Running 120) || true
if [ "$s" = Running ]; then
  pass "4. and it pulled $APP and is Running ($(since "$T")s from create)"
else
  fail "4. and it pulled $APP and is Running (got $s)"
  diag "$NS_ON" app
fi
T=$EPOCHREALTIME
pod "$NS_OFF" app
got=$(secrets_of "$NS_OFF" app)
check "4. the same Pod in the unlabelled namespace $NS_OFF is stored with [${got}]" [ -z "$got" ]
s=$(await "$NS_OFF" app PullFail 90) || true
check "4. and stays in $s ($(since "$T")s)" pull_failed "$s"
check "4. with the registry's 401 in its events" event_has "$NS_OFF" app '401 Unauthorized' 30

echo "smoke.sh: $FAILS failure(s) in $(since "$T0")s"
[ "$FAILS" = 0 ]
