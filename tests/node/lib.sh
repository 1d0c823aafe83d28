# shellcheck shell=bash
# shellcheck disable=SC2034  # settings used by the scripts that source this file
# Settings and helpers shared by the tests/node/ scripts (sourced, never run).
#
# Every script takes the same environment; the defaults keep this cluster apart from the
# API-server-only e2e (tests/e2e/kube-up.sh: /tmp/psi-e2e, ports 26443/33790/33800):
#   DIR             /tmp/psi-node        all state, logs, pid files, kubeconfigs
#   CACHE           /var/cache/e2e-k8s   Kubernetes binaries (tests/e2e/kube-build.sh)
#   API_PORT        46443                kube-apiserver, on NODE_IP only
#   ETCD_PORT       42379                etcd client, 127.0.0.1
#   ETCD_PEER_PORT  42380                etcd peer, 127.0.0.1
#   KUBELET_PORT    10250                kubelet API, on NODE_IP only
#   KUBELET_HEALTHZ_PORT 10248           kubelet healthz, 127.0.0.1
#   REG_PORT        5000                 the private registry, https://127.0.0.1:5000
#   POD_CIDR        10.244.0.0/24        Pod network; its first address is NODE_IP
#   BRIDGE          psinode0             the CNI bridge (holds NODE_IP)
#   NODE_NAME       psi-node
# kube-controller-manager and kube-scheduler serve no port.

NODE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$NODE_LIB_DIR/../.." && pwd)
DIR=${DIR:-/tmp/psi-node}
CACHE=${CACHE:-/var/cache/e2e-k8s}
API_PORT=${API_PORT:-46443}
ETCD_PORT=${ETCD_PORT:-42379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-42380}
KUBELET_PORT=${KUBELET_PORT:-10250}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-10248}
REG_PORT=${REG_PORT:-5000}
REG=127.0.0.1:$REG_PORT
POD_CIDR=${POD_CIDR:-10.244.0.0/24}
BRIDGE=${BRIDGE:-psinode0}
NODE_NAME=${NODE_NAME:-psi-node}
# The CNI network name: it tags the bridge plugin's iptables comments and the CNI result cache.
CNI_NET=psi-node
pod_net=${POD_CIDR%/*}
NODE_IP=${pod_net%.*}.$((${pod_net##*.} + 1))
unset pod_net
# The first address of --service-cluster-ip-range: the `kubernetes` Service's ClusterIP.
API_SERVICE_IP=10.96.0.1
CTR_SOCK=$DIR/containerd/containerd.sock
ADMIN_KUBECONFIG=$DIR/admin.kubeconfig
export DIR CACHE

# shellcheck source=tests/e2e/lib-proc.sh
source "$ROOT/tests/e2e/lib-proc.sh"

# kc ARGS...: kubectl as cluster admin.
kc() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=30s "$@"; }
# ctrd ARGS...: ctr against our containerd, CRI namespace.
ctrd() { ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }

# Elapsed time: T0 is set when a script sources this file; since START prints seconds since START.
T0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# log MSG...: "  12.3s MSG", seconds since the script started.
log() { printf '%6ss %s\n' "$(since "$T0")" "$*"; }

# wait_until TIMEOUT_S DESC LOGFILE CMD...: run CMD every 0.25 s until it succeeds. On timeout,
# print the last 25 lines of LOGFILE (when it is a file; "-" for none) and return 1.
wait_until() {
  local timeout=$1 desc=$2 logfile=$3 deadline
  shift 3
  deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timeout after ${timeout}s waiting for: $desc" >&2
      if [ -f "$logfile" ]; then
        echo "--- last lines of $logfile:" >&2
        tail -n 25 "$logfile" >&2
      fi
      return 1
    fi
    sleep 0.25
  done
}

# start NAME CMD...: run CMD detached in its own session, output in $DIR/NAME.log, pid in
# $DIR/NAME.pid. Use absolute paths in CMD: stop/alive checks match the command line.
start() {
  local name=$1
  shift
  setsid "$@" >>"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

# our_shims: pids of the containerd-shim-runc-v2 processes of OUR containerd (each command line
# names our socket: "-address $CTR_SOCK"). containerd 1.6 keeps no shim pid file.
our_shims() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    tr '\0' ' ' 2>/dev/null <"$f" | grep -q "^/usr/bin/containerd-shim-runc-v2 .*-address $CTR_SOCK\( \|\$\)" && echo "$pid"
  done
  return 0
}

# need_root SCRIPT: exit unless running as root.
need_root() {
  [ "$(id -u)" = 0 ] || { echo "$1: needs root (containerd, kubelet, iptables, mounts)" >&2; exit 1; }
}

# reg_creds: sets REG_USER and REG_PASS from $DIR/registry/creds (written by registry-up.sh).
reg_creds() {
  [ -s "$DIR/registry/creds" ] || { echo "no $DIR/registry/creds: run tests/node/registry-up.sh" >&2; return 1; }
  IFS=: read -r REG_USER REG_PASS <"$DIR/registry/creds"
}

# init_dir: create $DIR with the marker down.sh requires before it removes anything.
init_dir() {
  mkdir -p "$DIR"
  [ -e "$DIR/.psi-node" ] || echo "made by tests/node; removed by tests/node/down.sh" >"$DIR/.psi-node"
}
