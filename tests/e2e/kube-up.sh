#!/usr/bin/env bash
# Starts etcd and a real kube-apiserver (tests/e2e/kube-build.sh) on loopback, in $DIR.
#
# Usage: tests/e2e/kube-up.sh [--controller-manager]
#                                               start etcd + API server (fresh etcd data;
#                                               stops a previous instance in the same DIR first);
#                                               with --controller-manager also
#                                               kube-controller-manager (deployment, replicaset
#                                               namespace and disruption controllers only)
#        tests/e2e/kube-up.sh --apiserver-only  restart only the API server, keeping etcd and
#                                               its data (the "API server restart" scenario);
#                                               a running controller-manager reconnects
# Env:   DIR (/tmp/psi-e2e), CACHE (/var/cache/e2e-k8s), APISERVER ($CACHE/kube-apiserver),
#        CONTROLLER_MANAGER ($CACHE/kube-controller-manager),
#        API_PORT (26443), ETCD_PORT (33790), ETCD_PEER_PORT (33800),
#        STOP_TIMEOUT (3): seconds between SIGTERM and SIGKILL when stopping the API server (it
#        waits for open watches, e.g. the injector's, to end before exiting on its own)
# Writes:
#   $DIR/admin.kubeconfig     cluster-admin (group system:masters), bearer token
#   $DIR/injector.kubeconfig  user system:serviceaccount:pullsecret-injector:pullsecret-injector,
#                             groups system:serviceaccounts, system:serviceaccounts:pullsecret-injector,
#                             system:authenticated: can do only what applied Roles grant it
#   $DIR/ca.crt               the API server's CA
#   $DIR/webhook-client-ca.crt  CA of the client certificate the API server presents to webhooks
#                             (webhook-client.{crt,key}, through admission.yaml's WebhookAdmission
#                             kubeconfig), for `serve --client-ca`
#   $DIR/audit.log            API server audit log (Metadata level, Pod requests only), so
#                             tests can read the webhook's auditAnnotations
#   $DIR/{etcd,apiserver,controller-manager}.{pid,log}
# RBAC authorization; admission plugins MutatingAdmissionWebhook, ValidatingAdmissionWebhook,
# NamespaceLifecycle. Service account tokens can be requested (TokenRequest: issuer and signing
# key are set). No kubelet or scheduler: Pods are stored, never run. Without the
# controller-manager no controller creates Pods and deleted namespaces stay Terminating.
# Stop everything with tests/e2e/kube-down.sh.
set -euo pipefail
DIR=${DIR:-/tmp/psi-e2e}
CACHE=${CACHE:-/var/cache/e2e-k8s}
APISERVER=${APISERVER:-$CACHE/kube-apiserver}
API_PORT=${API_PORT:-26443} ETCD_PORT=${ETCD_PORT:-33790} ETCD_PEER_PORT=${ETCD_PEER_PORT:-33800}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CONTROLLER_MANAGER=${CONTROLLER_MANAGER:-$CACHE/kube-controller-manager}

only_apiserver=0 with_cm=0
for arg in "$@"; do
  case $arg in
    --apiserver-only) only_apiserver=1 ;;
    --controller-manager) with_cm=1 ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
[ -x "$APISERVER" ] || { echo "kube-up.sh: no kube-apiserver at $APISERVER (run tests/e2e/kube-build.sh)" >&2; exit 1; }
if [ "$with_cm" = 1 ] && [ ! -x "$CONTROLLER_MANAGER" ]; then
  echo "kube-up.sh: no kube-controller-manager at $CONTROLLER_MANAGER (run tests/e2e/kube-build.sh)" >&2; exit 1
fi
command -v etcd >/dev/null || { echo "kube-up.sh: etcd not on PATH (run tests/e2e/kube-build.sh)" >&2; exit 1; }
mkdir -p "$DIR" && cd "$DIR"

# shellcheck source=tests/e2e/lib-proc.sh
source "$HERE/lib-proc.sh"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ ! -f ca.crt ] || [ ! -f tokens.csv ]; then
  umask 077
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=psi-e2e-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
    -days 30 -extfile san.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  admin=$(openssl rand -hex 16) injector=$(openssl rand -hex 16)
  printf '%s,admin,admin,system:masters\n' "$admin" >tokens.csv
  printf '%s,system:serviceaccount:pullsecret-injector:pullsecret-injector,sa-uid,"system:serviceaccounts,system:serviceaccounts:pullsecret-injector,system:authenticated"\n' "$injector" >>tokens.csv
  chmod 0644 ca.crt
  umask 022
fi
# The client certificate the API server presents to every webhook (its admission
# configuration's WebhookAdmission kubeconfig, user '*'): `serve --client-ca
# webhook-client-ca.crt` accepts only it. Webhooks that ask for no certificate never see it.
if [ ! -f webhook-client.crt ]; then
  umask 077
  openssl req -x509 -newkey rsa:2048 -nodes -keyout webhook-client-ca.key -out webhook-client-ca.crt -days 30 \
    -subj /CN=psi-e2e-webhook-client-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout webhook-client.key -out webhook-client.csr \
    -subj /CN=kube-apiserver-webhook-client 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >webhook-client.ext
  openssl x509 -req -in webhook-client.csr -CA webhook-client-ca.crt -CAkey webhook-client-ca.key \
    -CAcreateserial -out webhook-client.crt -days 30 -extfile webhook-client.ext 2>/dev/null
  chmod 0644 webhook-client-ca.crt
  umask 022
fi
cat >webhook-client.kubeconfig <<KC
apiVersion: v1
kind: Config
users:
  - name: '*'
    user:
      client-certificate: $DIR/webhook-client.crt
      client-key: $DIR/webhook-client.key
KC
cat >admission.yaml <<ADM
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: MutatingAdmissionWebhook
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: WebhookAdmissionConfiguration
      kubeConfigFile: $DIR/webhook-client.kubeconfig
  - name: ValidatingAdmissionWebhook
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: WebhookAdmissionConfiguration
      kubeConfigFile: $DIR/webhook-client.kubeconfig
ADM
cat >audit-policy.yaml <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources: [{group: "", resources: [pods]}]
  - level: None
POLICY

start_apiserver() {
  if port_busy "$API_PORT"; then
    echo "kube-up.sh: 127.0.0.1:$API_PORT is already in use (another instance? set API_PORT)" >&2; return 1
  fi
  setsid "$APISERVER" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 --secure-port="$API_PORT" \
    --insecure-port=0 --tls-cert-file=apiserver.crt --tls-private-key-file=apiserver.key --client-ca-file=ca.crt \
    --token-auth-file=tokens.csv --authorization-mode=RBAC \
    --service-account-key-file=sa.pub --service-account-signing-key-file=sa.key \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 --advertise-address=127.0.0.1 \
    --enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,NamespaceLifecycle \
    --feature-gates=EphemeralContainers=true \
    --disable-admission-plugins=ServiceAccount --admission-control-config-file=admission.yaml \
    --audit-policy-file=audit-policy.yaml --audit-log-path=audit.log --audit-log-maxsize=100 \
    >>apiserver.log 2>&1 </dev/null &
  echo $! >apiserver.pid
}

wait_ready() {
  local token; token=$(sed -n '1s/,.*//p' tokens.csv)
  for _ in $(seq 1 120); do
    if curl -sf --max-time 2 --cacert ca.crt -H "Authorization: Bearer $token" \
        "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
      return 0
    fi
    if ! proc_alive apiserver.pid kube-apiserver; then break; fi
    sleep 0.25
  done
  echo "kube-up.sh: kube-apiserver did not become ready; last log lines:" >&2
  tail -n 20 apiserver.log >&2
  return 1
}

if [ "$only_apiserver" = 1 ]; then
  proc_alive etcd.pid etcd || { echo "kube-up.sh --apiserver-only: etcd is not running in $DIR" >&2; exit 1; }
  proc_stop apiserver.pid kube-apiserver "${STOP_TIMEOUT:-3}"
  echo "--- restart $(date +%T)" >>apiserver.log
  start_apiserver
  wait_ready
  echo "kube-apiserver restarted (pid $(cat apiserver.pid))"
  exit 0
fi

# A fresh start: stop what a previous run in this DIR left behind, by its recorded pids.
proc_stop controller-manager.pid kube-controller-manager 5
proc_stop apiserver.pid kube-apiserver "${STOP_TIMEOUT:-3}"
proc_stop etcd.pid etcd
rm -rf etcd-data apiserver.log etcd.log audit.log controller-manager.log
if port_busy "$ETCD_PORT" || port_busy "$ETCD_PEER_PORT"; then
  echo "kube-up.sh: 127.0.0.1:$ETCD_PORT or :$ETCD_PEER_PORT is already in use (set ETCD_PORT/ETCD_PEER_PORT)" >&2; exit 1
fi
setsid etcd --data-dir etcd-data --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls '' >etcd.log 2>&1 </dev/null &
echo $! >etcd.pid
start_apiserver

n=0
while IFS=, read -r token user _; do
  n=$((n + 1))
  name="admin"
  [ $n = 2 ] && name=injector
  cat >"$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: psi-e2e, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$DIR/ca.crt"}}]
users: [{name: $name, user: {token: $token}}]
contexts: [{name: psi-e2e, context: {cluster: psi-e2e, user: $name, namespace: default}}]
current-context: psi-e2e
KC
  chmod 0600 "$name.kubeconfig"
  : "$user"
done <tokens.csv
wait_ready
if [ "$with_cm" = 1 ]; then
  # Only what turns a Deployment into Pods and empties deleted namespaces; no serving ports
  # (another cluster on this machine may use the defaults).
  setsid "$CONTROLLER_MANAGER" --kubeconfig="$DIR/admin.kubeconfig" \
    --controllers=deployment,replicaset,namespace,disruption --leader-elect=false \
    --port=0 --secure-port=0 --use-service-account-credentials=false \
    --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 --concurrent-namespace-syncs=10 \
    >controller-manager.log 2>&1 </dev/null &
  echo $! >controller-manager.pid
  sleep 0.5
  proc_alive controller-manager.pid kube-controller-manager ||
    { echo "kube-up.sh: kube-controller-manager exited:" >&2; tail -n 20 controller-manager.log >&2; exit 1; }
  echo "kube-controller-manager running (pid $(cat controller-manager.pid), $DIR/controller-manager.log)"
fi
echo "kube-apiserver ready on https://127.0.0.1:$API_PORT: $DIR/admin.kubeconfig, $DIR/injector.kubeconfig"
