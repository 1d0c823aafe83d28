#!/usr/bin/env bash
# Builds a real kube-apiserver (Kubernetes 1.20.2, from Debian's `kubernetes` source package,
# which vendors every Go dependency) with Debian's Go, and installs Debian's etcd 3.4, kubectl,
# jq and openssl: what tests/e2e/run.sh needs. No container engine required.
#
# Usage: tests/e2e/kube-apiserver-build.sh        prints the kube-apiserver path
# Env:   CACHE (default /var/cache/e2e-k8s)       where the binary is kept
# Needs root and apt (it adds a deb-src entry). About 4 minutes on 2 cores the first time;
# idempotent: when the binary and the tools are present it only prints the path.
set -euo pipefail
CACHE=${CACHE:-/var/cache/e2e-k8s}
have_all() {
  [ -x "$CACHE/kube-apiserver" ] && command -v etcd >/dev/null && command -v kubectl >/dev/null &&
    command -v jq >/dev/null && command -v openssl >/dev/null && command -v curl >/dev/null
}
if have_all; then echo "$CACHE/kube-apiserver"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "kube-apiserver-build.sh: needs root (apt-get); missing: $CACHE/kube-apiserver or etcd/kubectl/jq/openssl/curl" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  apt-get install -y -qq "$@" >/dev/null
}
command -v etcd >/dev/null || apt_install etcd-server
command -v jq >/dev/null || apt_install jq
command -v openssl >/dev/null || apt_install openssl
command -v curl >/dev/null || apt_install curl
command -v kubectl >/dev/null || apt_install kubernetes-client
if [ -x "$CACHE/kube-apiserver" ]; then echo "$CACHE/kube-apiserver"; exit 0; fi

echo "kube-apiserver-build.sh: building kube-apiserver 1.20.2 into $CACHE (about 4 minutes)" >&2
mkdir -p "$CACHE" && cd "$CACHE"
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >/etc/apt/sources.list.d/debian-src.sources
  apt_updated=
fi
apt_install dpkg-dev golang-go rsync golang-github-modern-go-reflect2-dev
rm -rf src dl && mkdir -p dl
(cd dl && apt-get source --download-only kubernetes >/dev/null 2>&1)
dpkg-source -x dl/kubernetes_*.dsc src >/dev/null
# The vendored reflect2 1.0.1 breaks on Go >= 1.18; Debian ships 1.0.2.
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2
rm -rf src/vendor/github.com/modern-go/reflect2/debian
mkdir -p src/.go/src/k8s.io && ln -sfn ../../.. src/.go/src/k8s.io/kubernetes
(cd src && GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$CACHE/home" make WHAT=cmd/kube-apiserver >/dev/null)
cp src/_output/bin/kube-apiserver "$CACHE/kube-apiserver.new"
mv "$CACHE/kube-apiserver.new" "$CACHE/kube-apiserver"
rm -rf src dl "${CACHE:?}/home" "${CACHE:?}"/kubernetes_*
echo "$CACHE/kube-apiserver"
