#!/usr/bin/env bash
# Installs the Debian 12 packages the one-node cluster needs (all from Debian's own archive; no
# image is ever pulled from a public registry):
#   containerd 1.6, runc 1.1, containernetworking-plugins (bridge, host-local and loopback in
#   /usr/lib/cni), docker-registry (distribution 2.8), skopeo, umoci, busybox-static (the app
#   image), apache2-utils (htpasswd -B), iptables, openssl, curl, gcc + libc6-dev (the static
#   pause binary), and kubectl only when none is on PATH (any kubectl talks to the 1.20 server;
#   Debian's kubernetes-client conflicts with some other kubectl packages).
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
if [ ${#missing[@]} = 0 ]; then echo "deps.sh: all packages present"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "deps.sh: needs root to install: ${missing[*]}" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
echo "deps.sh: apt-get install ${missing[*]}"
install_pkgs() { apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
# A fresh machine may have no package lists yet (or stale ones): update once and retry.
install_pkgs 2>/dev/null || { apt-get -o DPkg::Lock::Timeout=300 update -qq && install_pkgs; }
echo "deps.sh: installed ${#missing[@]} package(s)"
