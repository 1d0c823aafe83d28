#!/usr/bin/env bash
# Installs the chart into a real kube-apiserver (no kubelet: Pods are stored, never run) and
# checks what only a server can: the objects are accepted (webhook configuration, RBAC,
# policy/v1beta1 PDB on 1.20), each service account (the webhook's, read-only, and the
# controller's, rendered with sync or repair) gets exactly the access each feature needs
# (kubectl auth can-i), helm upgrade keeps the generated CA, helm uninstall removes
# the cluster-scoped objects.
# Needs a kube-apiserver binary (KUBE_APISERVER, default /var/cache/e2e-k8s/kube-apiserver,
# as built by the e2e setup) and etcd on PATH; exits 0 with a NOTE when they are missing.
# Called by run.sh; standalone: tests/chart/live.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
tools_install --no-checkov

APISERVER=${KUBE_APISERVER:-/var/cache/e2e-k8s/kube-apiserver}
if [ ! -x "$APISERVER" ] || ! command -v etcd >/dev/null; then
  echo "NOTE live API server checks skipped: no kube-apiserver at $APISERVER or no etcd on PATH"
  exit 0
fi
ETCD_PORT=${LIVE_ETCD_PORT:-23797} ETCD_PEER_PORT=${LIVE_ETCD_PEER_PORT:-23807} API_PORT=${LIVE_API_PORT:-16447}
CHART=charts/pullsecret-injector
KUBECTL="$TOOLS/bin/kubectl"
DIR=$(mktemp -d)
etcd_pid='' api_pid=''
cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
passes=0 fails=0
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

cd "$DIR"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=live-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout api.key -out api.csr -subj /CN=kube-apiserver 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
openssl x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out api.crt -days 2 -extfile san.ext 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
token=$(openssl rand -hex 16)
printf '%s,admin,admin,system:masters\n' "$token" >tokens.csv
etcd --data-dir etcd-data --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" >etcd.log 2>&1 </dev/null &
etcd_pid=$!
"$APISERVER" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 --secure-port="$API_PORT" \
  --tls-cert-file=api.crt --tls-private-key-file=api.key --client-ca-file=ca.crt \
  --token-auth-file=tokens.csv --authorization-mode=RBAC \
  --service-account-key-file=sa.pub --service-account-signing-key-file=sa.key \
  --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.96.0.0/16 --advertise-address=127.0.0.1 \
  --enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,NamespaceLifecycle \
  --disable-admission-plugins=ServiceAccount >apiserver.log 2>&1 </dev/null &
api_pid=$!
cat >kubeconfig <<KC
apiVersion: v1
kind: Config
clusters: [{name: live, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$DIR/ca.crt"}}]
users: [{name: admin, user: {token: $token}}]
contexts: [{name: live, context: {cluster: live, user: admin}}]
current-context: live
KC
export KUBECONFIG=$DIR/kubeconfig
cd "$ROOT"
for _ in $(seq 1 120); do
  "$KUBECTL" get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.5
done
if ! "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
  fail "kube-apiserver did not become ready"; tail -n 20 "$DIR/apiserver.log"; exit 1
fi
server=$("$KUBECTL" version -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
echo "--- live checks against kube-apiserver $server"
k() { "$KUBECTL" "$@" 2>/dev/null; }

# can NS VERB RESOURCE [-n NS | -A] -> yes/no for the release's service account
can() {
  local sa=$1; shift
  k auth can-i --as "system:serviceaccount:$sa" "$@" || true
}
expect_can() {
  local case=$1 sa=$2 want=$3; shift 3
  local got; got=$(can "$sa" "$@")
  if [ "$got" = "$want" ]; then pass "$case: can-i $* = $want"; else fail "$case: can-i $* = $got, want $want"; fi
}

# case values-file: install into namespace = case; checks per case below. The prometheus-operator
# CRDs are not installed: ServiceMonitor and PrometheusRule are left out (the dashboard
# ConfigMap of monitoring-alerts is installed).
for case in defaults audit-mode existing-secret secret-awareness single-replica standalone sync-discovery tenancy repair-only monitoring-netpol monitoring-alerts credential-providers; do
  ns=live-$case
  values=$CHART/ci/$case-values.yaml
  # Server-side dry run of the rendered objects first: the API server validates and admits
  # them without storing anything.
  k create namespace "$ns" >/dev/null || true
  if "$HELM" template "$case" "$CHART" -n "$ns" -f "$values" --set metrics.serviceMonitor.enabled=false \
      --set metrics.prometheusRule.enabled=false --kube-version "${server#v}" >"$DIR/rendered.yaml" 2>"$DIR/render.err" \
     && "$KUBECTL" apply --dry-run=server -n "$ns" -f "$DIR/rendered.yaml" >"$DIR/dryrun.out" 2>&1; then
    pass "$case: kubectl apply --dry-run=server accepted $(grep -c 'created (server dry run)' "$DIR/dryrun.out") objects"
  else
    fail "$case: kubectl apply --dry-run=server"; cat "$DIR/render.err" "$DIR/dryrun.out" 2>/dev/null | head -n 20 | sed 's/^/       /'
  fi
  if [ "$(k get all,secrets,configmaps -n "$ns" -o name | grep -vc 'default-token\|kube-root-ca' || true)" != 0 ]; then
    fail "$case: the dry run stored objects"
  fi
  if ! "$HELM" install "$case" "$CHART" -n "$ns" --create-namespace -f "$values" \
      --set metrics.serviceMonitor.enabled=false --set metrics.prometheusRule.enabled=false --wait=false >"$DIR/install.out" 2>&1; then
    fail "$case: helm install on $server"; sed 's/^/       /' "$DIR/install.out" | head -n 20; continue
  fi
  pass "$case: helm install on $server accepted every object"
  # The webhook's Deployment (the controller's carries app.kubernetes.io/component=controller).
  name=$(k get deploy -n "$ns" -l 'app.kubernetes.io/component!=controller' -o jsonpath='{.items[0].metadata.name}')
  sa="$ns:$name"
  csa="$ns:$name-controller"
  read -r sync disc aware repair standalone prov < <("$PY" - "$CHART/values.yaml" "$values" <<'PY'
import sys, yaml
def merge(a, b):
    out = dict(a)
    for k, x in (b or {}).items():
        out[k] = merge(out[k], x) if isinstance(x, dict) and isinstance(out.get(k), dict) else x
    return out
v = merge(yaml.safe_load(open(sys.argv[1])), yaml.safe_load(open(sys.argv[2])))
c = v["config"]
print(*(int(bool(x)) for x in (c["sync"], c["discovery"], c["secretAwareness"], c["repair"], v["standalone"],
                                c["credentialProviders"]["providers"])))
PY
)
  yn() { if [ "$1" = 1 ]; then echo yes; else echo no; fi; }
  any() { for x in "$@"; do [ "$x" = 1 ] && { echo 1; return; }; done; echo 0; }
  writer=$([ "$standalone" = 0 ] && any "$sync" "$repair" "$prov" || echo 0)
  sources=$(any "$sync" "$disc" "$prov")
  # Deployments: the webhook always, the controller iff a writing feature is on.
  deps=$(k get deploy -n "$ns" -o name | sort | tr '\n' ' ')
  want_deps="deployment.apps/$name $([ "$writer" = 1 ] && echo "deployment.apps/$name-controller " || true)"
  if [ "$deps" = "$want_deps" ]; then pass "$case: Deployments $deps"; else fail "$case: Deployments '$deps', want '$want_deps'"; fi
  # Never, for either ServiceAccount: create pods, webhook configurations, RBAC.
  for who in "$sa" "$csa"; do
    expect_can "$case" "$who" no create pods -n default
    expect_can "$case" "$who" no patch mutatingwebhookconfigurations
    expect_can "$case" "$who" no create rolebindings -n "$ns"
  done
  if [ "$standalone" = 1 ]; then
    expect_can "$case" "$sa" no list namespaces
    expect_can "$case" "$sa" no get secrets -n "$ns"
    continue
  fi
  # The webhook's ServiceAccount reads only: namespaces, Secrets cluster-wide with
  # secretAwareness, the sources with discovery or sync. No write verb, Pods, eviction, Events
  # or Lease, whatever the features.
  expect_can "$case" "$sa" yes watch namespaces
  expect_can "$case" "$sa" "$(yn "$aware")" list secrets -A
  expect_can "$case" "$sa" "$(yn "$(any "$aware" "$sources")")" watch secrets -n "$ns"
  expect_can "$case" "$sa" no get secrets -n "$ns"
  for verb in create update patch delete; do
    expect_can "$case" "$sa" no "$verb" secrets -n default
    expect_can "$case" "$sa" no "$verb" secrets -n "$ns"
  done
  expect_can "$case" "$sa" no list pods -A
  expect_can "$case" "$sa" no create pods --subresource=eviction -n default
  expect_can "$case" "$sa" no create events.events.k8s.io -n default
  expect_can "$case" "$sa" no create leases.coordination.k8s.io -n "$ns"
  expect_can "$case" "$sa" no get "leases.coordination.k8s.io/$name" -n "$ns"
  expect_can "$case" "$sa" no create configmaps -n "$ns"
  expect_can "$case" "$sa" no get "configmaps/$name-copies" -n "$ns"
  # The controller's ServiceAccount: nothing without a writing feature; otherwise the writes.
  expect_can "$case" "$csa" "$(yn "$writer")" watch namespaces
  expect_can "$case" "$csa" "$(yn "$writer")" create leases.coordination.k8s.io -n "$ns"
  expect_can "$case" "$csa" "$(yn "$writer")" patch "leases.coordination.k8s.io/$name" -n "$ns"
  expect_can "$case" "$csa" no patch leases.coordination.k8s.io/other -n "$ns"
  expect_can "$case" "$csa" "$(yn "$([ "$writer" = 1 ] && echo "$sources" || echo 0)")" watch secrets -n "$ns"
  expect_can "$case" "$csa" "$(yn "$sync")" list secrets -A
  for verb in create update delete; do
    expect_can "$case" "$csa" "$(yn "$sync")" "$verb" secrets -n default
  done
  expect_can "$case" "$csa" no patch secrets -n default
  expect_can "$case" "$csa" no get secrets -n default
  expect_can "$case" "$csa" "$(yn "$(any "$sync" "$repair")")" list pods -A
  expect_can "$case" "$csa" "$(yn "$repair")" watch pods -A
  expect_can "$case" "$csa" "$(yn "$repair")" create pods --subresource=eviction -n default
  # Events: repair's on Pods, sync's for each revoked copy.
  expect_can "$case" "$csa" "$(yn "$(any "$sync" "$repair")")" create events.events.k8s.io -n default
  # Sync's ownership ledger: one ConfigMap in the release namespace, nothing else.
  expect_can "$case" "$csa" "$(yn "$sync")" create configmaps -n "$ns"
  expect_can "$case" "$csa" "$(yn "$sync")" get "configmaps/$name-copies" -n "$ns"
  expect_can "$case" "$csa" "$(yn "$sync")" update "configmaps/$name-copies" -n "$ns"
  expect_can "$case" "$csa" no update "configmaps/$name" -n "$ns"
  expect_can "$case" "$csa" no delete "configmaps/$name-copies" -n "$ns"
  expect_can "$case" "$csa" no create configmaps -n default
  # credentialProviders: create Secrets in the release namespace, and read/write only the
  # providers' Secrets by name (ci/credential-providers-values.yaml: ecr and gar).
  # (sync's ClusterRole creates and updates Secrets everywhere anyway.)
  expect_can "$case" "$csa" "$(yn "$(any "$prov" "$sync")")" create secrets -n "$ns"
  for verb in get patch update; do
    for s in ecr gar; do
      expect_can "$case" "$csa" "$(yn "$(any "$prov" "$([ "$verb" = update ] && echo "$sync" || echo 0)")")" "$verb" "secrets/$s" -n "$ns"
    done
    other=$(yn "$([ "$verb" = update ] && echo "$sync" || echo 0)")
    expect_can "$case" "$csa" "$other" "$verb" secrets/other -n "$ns"
    expect_can "$case" "$csa" "$other" "$verb" secrets/ecr -n default
  done
  expect_can "$case" "$csa" "$(yn "$sync")" delete secrets/ecr -n "$ns"
  expect_can "$case" "$sa" no create secrets -n "$ns"
  expect_can "$case" "$sa" no get secrets/ecr -n "$ns"
done

# Upgrade keeps the Helm-generated CA (lookup), and with it the Pods (checksum/tls).
# --reuse-values: an upgrade given only --set starts again from the chart's defaults, and those
# have no image (docs/install.md, Upgrade).
ca() { k get mutatingwebhookconfiguration defaults-pullsecret-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | sha256sum; }
sum() { k get deploy -n live-defaults defaults-pullsecret-injector -o jsonpath='{.spec.template.metadata.annotations.checksum/tls}'; }
ca1=$(ca) sum1=$(sum)
if "$HELM" upgrade defaults "$CHART" -n live-defaults --reuse-values --set logLevel=debug >"$DIR/upgrade.out" 2>&1 \
   && [ "$(ca)" = "$ca1" ] && [ "$(sum)" = "$sum1" ] && [ -n "$sum1" ]; then
  pass "defaults: helm upgrade reuses the generated CA and serving certificate"
else
  fail "defaults: helm upgrade changed the CA or the TLS checksum"; cat "$DIR/upgrade.out"
fi

# Pods in a selected namespace are still created while no webhook Pod runs (failurePolicy Ignore).
k create namespace team-a >/dev/null && k label namespace team-a pullsecret-injector/inject=enabled >/dev/null
if k run probe -n team-a --image=docker.io/library/busybox:1.36 --restart=Never >/dev/null; then
  pass "failurePolicy=Ignore: a Pod is admitted while the webhook is unreachable"
else
  fail "a Pod was refused while the webhook is unreachable (failurePolicy Ignore)"
fi

# Uninstall removes the cluster-scoped objects.
"$HELM" uninstall defaults -n live-defaults --debug >"$DIR/uninstall.out" 2>&1 || true
order=$(grep -o 'starting delete resource.*kind=[A-Za-z]*' "$DIR/uninstall.out" | sed 's/.*kind=//' | tr '\n' ' ')
if [ "${order%% *}" = MutatingWebhookConfiguration ]; then
  pass "defaults: helm uninstall deletes the MutatingWebhookConfiguration first ($order)"
else
  fail "defaults: helm uninstall order: $order"
fi
if ! k get mutatingwebhookconfiguration defaults-pullsecret-injector >/dev/null && ! k get clusterrole defaults-pullsecret-injector >/dev/null; then
  pass "defaults: helm uninstall removes the MutatingWebhookConfiguration and ClusterRole"
else
  fail "defaults: helm uninstall left cluster-scoped objects behind"
fi

echo "live: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
