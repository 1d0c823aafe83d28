#!/usr/bin/env bash
# Renders the chart and splits the result for the e2e tests (which apply the chart's own RBAC
# and webhook configuration to a real API server).
# Usage: tests/chart/render.sh [-n NAMESPACE] [-r RELEASE] [-k KUBE_VERSION] VALUES_FILE OUTDIR [-- HELM_ARGS...]
#   defaults: namespace and release pullsecret-injector (the e2e service account
#   system:serviceaccount:pullsecret-injector:pullsecret-injector), Kubernetes 1.20.2.
# Writes into OUTDIR:
#   all.yaml           the whole render
#   rbac.yaml          ServiceAccount, ClusterRole/Binding, Role/Binding
#   webhook.yaml       the MutatingWebhookConfiguration (see to_loopback.py)
#   config.yaml        the injector's config file, as the ConfigMap holds it
#   tls/{ca.crt,tls.crt,tls.key}   when tls.source=helm: the generated certificates
#   objects/<kind>-<name>.yaml     one file per object
set -euo pipefail
NS=pullsecret-injector RELEASE=pullsecret-injector KUBE=1.20.2
while getopts "n:r:k:" o; do
  case $o in
    n) NS=$OPTARG ;;
    r) RELEASE=$OPTARG ;;
    k) KUBE=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { sed -n '2,15p' "$0"; exit 2; }
VALUES=$(realpath "$1") OUT=$2
shift 2
[ "${1:-}" = "--" ] && shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/chart/tools.sh
source "$ROOT/tests/chart/tools.sh"
tools_install --no-checkov >&2
mkdir -p "$OUT"
"$HELM" template "$RELEASE" "$ROOT/charts/pullsecret-injector" -n "$NS" -f "$VALUES" --kube-version "$KUBE" "$@" >"$OUT/all.yaml"
"$PY" - "$OUT" <<'PY'
import base64, os, sys, yaml
out = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(os.path.join(out, "all.yaml"))) if d]
groups = {
    "rbac.yaml": {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"},
    "webhook.yaml": {"MutatingWebhookConfiguration"},
}
os.makedirs(os.path.join(out, "objects"), exist_ok=True)
for fname, kinds in groups.items():
    with open(os.path.join(out, fname), "w") as f:
        yaml.safe_dump_all([d for d in docs if d["kind"] in kinds], f, sort_keys=False)
for d in docs:
    with open(os.path.join(out, "objects", f"{d['kind'].lower()}-{d['metadata']['name']}.yaml"), "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
    if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}):
        open(os.path.join(out, "config.yaml"), "w").write(d["data"]["config.yaml"])
    if d["kind"] == "Secret" and d.get("type") == "kubernetes.io/tls":
        os.makedirs(os.path.join(out, "tls"), exist_ok=True)
        for k, v in d["data"].items():
            open(os.path.join(out, "tls", k), "wb").write(base64.b64decode(v))
print(f"rendered {len(docs)} objects into {out}")
PY
