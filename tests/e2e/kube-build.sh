#!/usr/bin/env bash
# Builds Kubernetes' own binaries (1.20.2, from Debian's `kubernetes` source package, which
# vendors every Go dependency) with Debian's Go, in one `make` so they share codegen and the Go
# build cache, and installs Debian's etcd 3.4, kubectl, jq, openssl and curl. No container
# engine required.
#
#   kube-apiserver                                   the API-server e2e (tests/e2e/run.sh)
#   kubelet, kube-controller-manager, kube-scheduler the one-node cluster (tests/node/)
#
# Usage: tests/e2e/kube-build.sh          prints the kube-apiserver path
# Env:   CACHE (default /var/cache/e2e-k8s)  where the binaries are kept
#        BINS  (default: all four)           which binaries must exist
# Needs root and apt (it adds a deb-src entry). About 12 minutes on 2 idle cores for all four
# the first time (kube-apiserver alone about 4); idempotent: when the binaries and the tools are
# present it only prints the path.
set -euo pipefail
CACHE=${CACHE:-/var/cache/e2e-k8s}
BINS=${BINS:-kube-apiserver kubelet kube-controller-manager kube-scheduler}
missing_bins() { for b in $BINS; do [ -x "$CACHE/$b" ] || echo "$b"; done; }
have_tools() {
  command -v etcd >/dev/null && command -v kubectl >/dev/null && command -v jq >/dev/null &&
    command -v openssl >/dev/null && command -v curl >/dev/null
}
if have_tools && [ -z "$(missing_bins)" ]; then echo "$CACHE/kube-apiserver"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "kube-build.sh: needs root (apt-get); missing: $(missing_bins | tr '\n' ' ') or etcd/kubectl/jq/openssl/curl" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v etcd >/dev/null || apt_install etcd-server
command -v jq >/dev/null || apt_install jq
command -v openssl >/dev/null || apt_install openssl
command -v curl >/dev/null || apt_install curl
command -v kubectl >/dev/null || apt_install kubernetes-client
missing=$(missing_bins | tr '\n' ' ')
if [ -z "${missing// /}" ]; then echo "$CACHE/kube-apiserver"; exit 0; fi

echo "kube-build.sh: building $missing(Kubernetes 1.20.2) into $CACHE" >&2
mkdir -p "$CACHE" && cd "$CACHE"
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >/etc/apt/sources.list.d/debian-src.sources
  apt_updated=
fi
apt_install dpkg-dev golang-go rsync golang-github-modern-go-reflect2-dev
rm -rf src dl && mkdir -p dl
(cd dl && apt-get source --download-only kubernetes >/dev/null 2>&1)
dpkg-source --no-copy -x dl/kubernetes_*.dsc src >/dev/null
# The vendored reflect2 1.0.1 breaks on Go >= 1.18; Debian ships 1.0.2.
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2
rm -rf src/vendor/github.com/modern-go/reflect2/debian
mkdir -p src/.go/src/k8s.io && ln -sfn ../../.. src/.go/src/k8s.io/kubernetes
what=""; for b in $missing; do what="$what cmd/$b"; done
t0=$SECONDS
(cd src && GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$CACHE/home" make WHAT="${what# }" >"$CACHE/build.log" 2>&1) ||
  { echo "kube-build.sh: make failed; last lines of $CACHE/build.log:" >&2; tail -30 "$CACHE/build.log" >&2; exit 1; }
for b in $missing; do
  cp "src/_output/bin/$b" "$CACHE/$b.new" && mv "$CACHE/$b.new" "$CACHE/$b"
done
echo "kube-build.sh: built $missing in $((SECONDS - t0))s" >&2
rm -rf src dl "${CACHE:?}/home" "${CACHE:?}"/kubernetes_*
echo "$CACHE/kube-apiserver"
