#!/usr/bin/env bash
# Installs the Debian 12 packages the one-node cluster needs (all from Debian's own archive; no
# image is ever pulled from a public registry):
#   containerd 1.6, runc 1.1, containernetworking-plugins (bridge, host-local and loopback in
#   /usr/lib/cni), docker-registry (distribution 2.8), skopeo, umoci, busybox-static (the app
#   image), apache2-utils (htpasswd -B), iptables, openssl, curl, gcc + libc6-dev (the static
#   pause binary, the credential-provider test plugin), and kubectl only when none is on PATH
#   (any kubectl talks to the 1.20 server; Debian's kubernetes-client conflicts with some other
#   kubectl packages).
# And Prometheus for s7_minted_credentials (a real server evaluates the chart's alert rules):
# only the binary of Debian's prometheus package, unpacked into .tools/bin/prometheus (as
# tests/alerts/run.sh does for promtool); nothing installed system-wide, no service started.
# The scripts start their own containerd and registry; a system instance would not be used (on
# Debian images without systemd, apt starts none).
#
# Usage: tests/node/deps.sh      (root; idempotent: does nothing when everything is installed)
# Env:   none
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins docker-registry skopeo umoci busybox-static
  apache2-utils iptables openssl curl gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v kubectl >/dev/null || missing+=(kubernetes-client)
PROMETHEUS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.tools/bin/prometheus
if [ ${#missing[@]} = 0 ] && "$PROMETHEUS" --version >/dev/null 2>&1; then
  echo "deps.sh: all packages present, $PROMETHEUS"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "deps.sh: needs root to install: ${missing[*]} prometheus" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
updated=
# A fresh machine may have no package lists yet (or stale ones): update once and retry.
apt_retry() {
  "$@" 2>/dev/null && return 0
  [ -z "$updated" ] || return 1
  apt-get -o DPkg::Lock::Timeout=300 update -qq && updated=1 && "$@"
}
if [ ${#missing[@]} != 0 ]; then
  echo "deps.sh: apt-get install ${missing[*]}"
  install_pkgs() { apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  apt_retry install_pkgs
  echo "deps.sh: installed ${#missing[@]} package(s)"
fi
if ! "$PROMETHEUS" --version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  chmod 777 "$tmp" # apt's download sandbox user must be able to write there
  download() { (cd "$tmp" && apt-get download -qq prometheus); }
  apt_retry download
  mkdir -p "$(dirname "$PROMETHEUS")"
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -O ./usr/bin/prometheus >"$PROMETHEUS.tmp"
  chmod 0755 "$PROMETHEUS.tmp" && mv "$PROMETHEUS.tmp" "$PROMETHEUS"
  rm -rf "$tmp"
  echo "deps.sh: $("$PROMETHEUS" --version 2>&1 | head -n 1) unpacked into $PROMETHEUS"
fi
