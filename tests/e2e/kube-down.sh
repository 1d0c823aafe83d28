#!/usr/bin/env bash
# Stops what kube-up.sh started in $DIR (default /tmp/psi-e2e: etcd, the API server and the
# controller-manager if it was started), by the pids it recorded, and
# removes etcd's data. Certificates, tokens and logs stay for inspection.
set -euo pipefail
DIR=${DIR:-/tmp/psi-e2e}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/lib-proc.sh
source "$HERE/lib-proc.sh"
[ -d "$DIR" ] || exit 0
proc_stop "$DIR/controller-manager.pid" kube-controller-manager 5
proc_stop "$DIR/apiserver.pid" kube-apiserver "${STOP_TIMEOUT:-3}"
proc_stop "$DIR/etcd.pid" etcd
rm -rf "$DIR/etcd-data"
