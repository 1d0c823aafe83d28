#!/usr/bin/env bash
# Starts a real one-node Kubernetes 1.20.2 on this machine, offline, everything in $DIR:
#   containerd 1.6 (Debian; private root, state and socket) -> runc, CNI bridge + host-local,
#   etcd 3.4, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on
#   containerd (binaries from tests/e2e/kube-build.sh, called here: it only builds what is
#   missing). Waits for the Node to be Ready and for the default ServiceAccount's token.
#
# Usage: tests/node/up.sh       (root) re-runnable: running components are kept, stopped ones
#                               started; stop everything with tests/node/down.sh
# Env:   DIR, CACHE, API_PORT, ETCD_PORT, ETCD_PEER_PORT, KUBELET_PORT, KUBELET_HEALTHZ_PORT,
#        POD_CIDR, BRIDGE, NODE_NAME (defaults and ports: tests/node/lib.sh),
#        KUBELET_VERBOSITY (2), KUBELET_AS_ADMIN (0; 1: the kubelet uses the admin token instead
#        of system:node:$NODE_NAME, which avoids the Node authorizer race described in README.md),
#        KUBELET_SYNC_FREQUENCY (10s; the kubelet's default is 1m: how soon ConfigMap and Secret
#        volume edits reach the Pods)
# Network: the bridge $BRIDGE holds NODE_IP (the first address of POD_CIDR, 10.244.0.1), made
#   before anything starts, so nothing depends on the host's interfaces or routes. The API server
#   listens on https://NODE_IP:API_PORT only, the kubelet on NODE_IP:KUBELET_PORT (client
#   certificates of our CA only; the API server has one) and 127.0.0.1:KUBELET_HEALTHZ_PORT.
#   No kube-proxy: the API server resolves webhook Services to Pod IPs itself
#   (--enable-aggregator-routing=true), and one DNAT rule (nat chain PSI-NODE-API) stands in for
#   kube-proxy for the `kubernetes` Service (10.96.0.1:443), so Pods reach the API server with
#   in-cluster config. There is no cluster DNS.
# Identities (bearer tokens in $DIR/tokens.csv): admin (system:masters; also used by the
#   controller-manager and the scheduler) and the kubelet as system:node:$NODE_NAME (Node
#   authorizer + NodeRestriction, as on a real node: it reads only the Secrets of its Pods).
# Writes: $DIR/admin.kubeconfig, $DIR/kubelet.kubeconfig, $DIR/ca.crt (the cluster CA),
#   $DIR/<component>.{pid,log} for etcd apiserver controller-manager scheduler kubelet,
#   $DIR/containerd/{containerd.pid,containerd.log,config.toml}, $DIR/audit.log (Pods, Metadata),
#   $DIR/sysctl.saved (host values restored by down.sh).
# Host changes (all undone by down.sh): the bridge, sysctls net.ipv4.ip_forward=1 and
#   net.bridge.bridge-nf-call-iptables=1, the kubelet's vm.overcommit_memory=1, kernel.panic=10,
#   kernel.panic_on_oops=1 (and vm.panic_on_oom, kernel.keys.root_max*), iptables (PSI-NODE-API,
#   the CNI bridge plugin's masquerade chains), kubepods cgroups, /var/log/pods and
#   /var/log/containers entries, /run/netns/cni-* of our Pods, shim sockets in /run/containerd/s/.
# On this machine type (root without CAP_SYS_RESOURCE) containerd needs restrict_oom_score_adj
# and the kubelet oomScoreAdj 0: see README.md.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root up.sh
for t in containerd runc ctr etcd kubectl openssl curl iptables ip; do
  command -v "$t" >/dev/null || { echo "up.sh: $t missing (run tests/node/deps.sh)" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
  { echo "up.sh: CNI plugins missing in /usr/lib/cni (containernetworking-plugins)" >&2; exit 1; }
BINS="kube-apiserver kubelet kube-controller-manager kube-scheduler" "$ROOT/tests/e2e/kube-build.sh" >/dev/null
init_dir
mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/kubelet"
cd "$DIR"
port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- 1. certificates, tokens, kubeconfigs (once per DIR)
if [ ! -s tokens.csv ]; then
  (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=psi-node-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
      "$NODE_IP" "$API_SERVICE_IP" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
      -days 30 -extfile apiserver.ext 2>/dev/null
    # The API server's client certificate for the kubelet (logs, exec, port-forward).
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
      -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >kubelet-client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt \
      -days 30 -extfile kubelet-client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    printf '%s,admin,admin,system:masters\n' "$(openssl rand -hex 16)" >tokens.csv.new
    printf '%s,system:node:%s,node-%s,system:nodes\n' "$(openssl rand -hex 16)" "$NODE_NAME" "$NODE_NAME" >>tokens.csv.new
    mv tokens.csv.new tokens.csv
  )
  chmod 0644 ca.crt
fi
kubeconfig() { # kubeconfig FILE USER TOKEN
  cat >"$1" <<KCF
apiVersion: v1
kind: Config
clusters: [{name: psi-node, cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$DIR/ca.crt"}}]
users: [{name: $2, user: {token: $3}}]
contexts: [{name: psi-node, context: {cluster: psi-node, user: $2, namespace: default}}]
current-context: psi-node
KCF
  chmod 0600 "$1"
}
kubeconfig admin.kubeconfig admin "$(sed -n '1s/,.*//p' tokens.csv)"
if [ "${KUBELET_AS_ADMIN:-0}" = 1 ]; then
  kubeconfig kubelet.kubeconfig admin "$(sed -n '1s/,.*//p' tokens.csv)"
else
  kubeconfig kubelet.kubeconfig "system:node:$NODE_NAME" "$(sed -n '2s/,.*//p' tokens.csv)"
fi

# --- 2. host network: the bridge holding NODE_IP, forwarding, bridged traffic through iptables.
# The host values of every sysctl this script or the kubelet changes are saved once, before
# the first change, and restored by down.sh.
SYSCTLS="net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables vm/overcommit_memory vm/panic_on_oom
  kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes"
if [ ! -s sysctl.saved ]; then
  for s in $SYSCTLS; do
    if [ -r "/proc/sys/$s" ]; then echo "$s $(cat "/proc/sys/$s")"; fi
  done >sysctl.saved.new
  mv sysctl.saved.new sysctl.saved
fi
ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
ip -4 addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
echo 1 >/proc/sys/net/ipv4/ip_forward
if [ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]; then echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables; fi
cat >"$DIR/cni/net.d/10-$CNI_NET.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$DIR/cni/ipam"}
    }
  ]
}
JSON

# Host directories the kubelet, containerd and CNI create if missing: down.sh removes the ones
# listed here (when empty).
for d in /var/log/pods /var/log/containers /var/lib/cni /var/lib/cni/results /run/netns /run/containerd /run/containerd/s; do
  [ -e "$d" ] || grep -qx "$d" host-dirs.created 2>/dev/null || echo "$d" >>host-dirs.created
done

# --- 3. containerd, private to $DIR, and the pause image (never pulled: imported)
"$NODE_LIB_DIR/images.sh" >/dev/null
C=$DIR/containerd
mkdir -p "$C/certs.d"
cat >"$C/config.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
oom_score = 0

[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  address = "$C/debug.sock"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.local/pause:psi-node"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE (CapBnd bit 24), so runc cannot set the sandbox's
  # oom_score_adj -998 and every sandbox fails ("can't get final child's PID from pipe: EOF";
  # runc --debug: "failed to update /proc/self/oom_score_adj: Permission denied"). This clamps
  # the values to containerd's own (0).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$C/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    # hosts.toml per registry host, written by registry-up.sh (its CA).
    config_path = "$C/certs.d"
TOML
if proc_alive "$C/containerd.pid" "$C/config.toml"; then
  log "containerd already running (pid $(cat "$C/containerd.pid"))"
else
  setsid containerd --config "$C/config.toml" >>"$C/containerd.log" 2>&1 </dev/null &
  echo $! >"$C/containerd.pid"
fi
wait_until 30 "containerd on $CTR_SOCK" "$C/containerd.log" ctr --address "$CTR_SOCK" version
ctrd images import "$DIR/images/pause.tar" >/dev/null
grep -qx 'k8s.local/pause:psi-node' <<<"$(ctrd images ls -q)" ||
  { echo "up.sh: the pause image is not in containerd after import" >&2; exit 1; }
log "containerd ready, pause image imported (bridge $BRIDGE $NODE_IP)"

# --- 4. etcd (fresh data whenever it is not running)
if proc_alive etcd.pid "$DIR/etcd-data"; then
  log "etcd already running (pid $(cat etcd.pid))"
else
  if port_busy 127.0.0.1 "$ETCD_PORT" || port_busy 127.0.0.1 "$ETCD_PEER_PORT"; then
    echo "up.sh: 127.0.0.1:$ETCD_PORT or :$ETCD_PEER_PORT in use (set ETCD_PORT/ETCD_PEER_PORT)" >&2; exit 1
  fi
  rm -rf "$DIR/etcd-data"
  start etcd etcd --name psi-node --data-dir "$DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "psi-node=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ''
fi
wait_until 30 "etcd healthy" etcd.log curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
log "etcd ready on 127.0.0.1:$ETCD_PORT"

# --- 5. kube-apiserver
cat >audit-policy.yaml <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources: [{group: "", resources: [pods]}]
  - level: None
POLICY
if proc_alive apiserver.pid "$CACHE/kube-apiserver"; then
  log "kube-apiserver already running (pid $(cat apiserver.pid))"
else
  port_busy "$NODE_IP" "$API_PORT" && { echo "up.sh: $NODE_IP:$API_PORT in use (set API_PORT)" >&2; exit 1; }
  start apiserver "$CACHE/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
    --tls-cert-file="$DIR/apiserver.crt" --tls-private-key-file="$DIR/apiserver.key" --client-ca-file="$DIR/ca.crt" \
    --token-auth-file="$DIR/tokens.csv" --authorization-mode=Node,RBAC \
    --kubelet-client-certificate="$DIR/kubelet-client.crt" --kubelet-client-key="$DIR/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$DIR/sa.pub" --service-account-signing-key-file="$DIR/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --enable-aggregator-routing=true \
    --audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/audit.log" --audit-log-maxsize=100
fi
api_ready() { kc get --raw /readyz && proc_alive apiserver.pid "$CACHE/kube-apiserver"; }
wait_until 90 "kube-apiserver /readyz" apiserver.log api_ready
log "kube-apiserver ready on https://$NODE_IP:$API_PORT"

# --- 6. Pods -> API server: 10.96.0.1:443 -> NODE_IP:API_PORT (kube-proxy's job, for one Service).
# Retried: with the nft backend, `iptables -N` once failed while the CNI plugin edited nat, and
# iptables 1.8.9 reports a missing chain as "chain ... is incompatible, use 'nft' tool".
DNAT_RULE=(-s "$POD_CIDR" -d "$API_SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT")
api_dnat() {
  { iptables -w 5 -t nat -S PSI-NODE-API >/dev/null 2>&1 || iptables -w 5 -t nat -N PSI-NODE-API; } &&
    iptables -w 5 -t nat -F PSI-NODE-API &&
    iptables -w 5 -t nat -A PSI-NODE-API "${DNAT_RULE[@]}" &&
    { iptables -w 5 -t nat -C PREROUTING -j PSI-NODE-API 2>/dev/null || iptables -w 5 -t nat -I PREROUTING -j PSI-NODE-API; }
}
for _ in 1 2 3 4 5; do api_dnat 2>/dev/null && break; sleep 1; done
iptables -w 5 -t nat -C PSI-NODE-API "${DNAT_RULE[@]}" ||
  { echo "up.sh: could not install the DNAT rule for $API_SERVICE_IP:443" >&2; exit 1; }

# --- 7. kubelet on containerd
cat >kubelet-config.yaml <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
# Only clients with a certificate of our CA (the API server) may use the kubelet API.
authentication:
  x509: {clientCAFile: $DIR/ca.crt}
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
# Its default -999 needs CAP_SYS_RESOURCE, which root lacks on this machine type.
oomScoreAdj: 0
# No kube-proxy and no hostPorts: the KUBE-* utility chains are not needed.
makeIPTablesUtilChains: false
serializeImagePulls: false
# Ready is reported on the first status update after registration: 2 s instead of 10 s.
nodeStatusUpdateFrequency: 2s
# How often each Pod is re-synced, which is when the kubelet rewrites its ConfigMap and Secret
# volumes (1 to 1.5 times this). The default 1m made a ConfigMap edit reach the injector in
# 60 - 90 s here; 10s keeps the story's three file swaps (config, certificate) quick.
syncFrequency: ${KUBELET_SYNC_FREQUENCY:-10s}
# The story creates a Pod a second during operations (5 events each); at the default 5 events/s
# the kubelet's Events lagged more than 30 s behind what it did.
eventRecordQPS: 50
eventBurst: 100
# CI disks are often nearly full: image GC or eviction must not remove the test's images or Pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
resolvConf: /etc/resolv.conf
YAML
if proc_alive kubelet.pid "$CACHE/kubelet"; then
  log "kubelet already running (pid $(cat kubelet.pid))"
else
  port_busy "$NODE_IP" "$KUBELET_PORT" && { echo "up.sh: $NODE_IP:$KUBELET_PORT in use (set KUBELET_PORT)" >&2; exit 1; }
  port_busy 127.0.0.1 "$KUBELET_HEALTHZ_PORT" && { echo "up.sh: 127.0.0.1:$KUBELET_HEALTHZ_PORT in use (set KUBELET_HEALTHZ_PORT)" >&2; exit 1; }
  start kubelet "$CACHE/kubelet" --config="$DIR/kubelet-config.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CTR_SOCK" \
    --image-service-endpoint="unix://$CTR_SOCK" --pod-infra-container-image=k8s.local/pause:psi-node \
    --root-dir="$DIR/kubelet" --cert-dir="$DIR/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v="${KUBELET_VERBOSITY:-2}"
fi

# --- 8. controller-manager (ServiceAccount + token controllers, ReplicaSets, Deployments,
# node lifecycle, garbage collector...) and scheduler; neither serves a port.
if proc_alive controller-manager.pid "$CACHE/kube-controller-manager"; then
  log "kube-controller-manager already running"
else
  start controller-manager "$CACHE/kube-controller-manager" --kubeconfig="$DIR/admin.kubeconfig" \
    --service-account-private-key-file="$DIR/sa.key" --root-ca-file="$DIR/ca.crt" \
    --use-service-account-credentials=false --leader-elect=false --port=0 --secure-port=0 --controllers='*'
fi
if proc_alive scheduler.pid "$CACHE/kube-scheduler"; then
  log "kube-scheduler already running"
else
  start scheduler "$CACHE/kube-scheduler" --kubeconfig="$DIR/admin.kubeconfig" --leader-elect=false --port=0 --secure-port=0
fi

# --- 9. Ready
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] &&
    proc_alive kubelet.pid "$CACHE/kubelet"
}
wait_until 120 "node $NODE_NAME Ready" kubelet.log node_ready
log "node $NODE_NAME Ready"
for c in controller-manager:kube-controller-manager scheduler:kube-scheduler; do
  proc_alive "${c%%:*}.pid" "$CACHE/${c#*:}" ||
    { echo "up.sh: ${c#*:} exited; last lines of $DIR/${c%%:*}.log:" >&2; tail -n 25 "${c%%:*}.log" >&2; exit 1; }
done
# Pods that mount a token need the ServiceAccount and its token Secret (token controller).
sa_token() { [ -n "$(kc -n default get serviceaccount default -o jsonpath='{.secrets[0].name}')" ]; }
wait_until 60 "default ServiceAccount token" controller-manager.log sa_token
log "default ServiceAccount has its token"
cat <<EOF
up.sh: one-node cluster ready
  KUBECONFIG=$ADMIN_KUBECONFIG   (API https://$NODE_IP:$API_PORT, node $NODE_NAME $NODE_IP, Pods on $POD_CIDR)
  logs: $DIR/{etcd,apiserver,controller-manager,scheduler,kubelet}.log, $DIR/containerd/containerd.log, $DIR/audit.log
  stop: tests/node/down.sh
EOF
