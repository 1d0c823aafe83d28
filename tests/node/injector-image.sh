#!/usr/bin/env bash
# The injector's image for the node: scripts/build-image.sh (the users' way: the Dockerfile's
# final stage built with umoci from the static binary, checked, pushed with skopeo, the pushed
# config read back) with the private registry's CA and credentials. The credentials go to
# skopeo through an auth file written by `skopeo login --password-stdin`, never on a command
# line.
#
# Usage: tests/node/injector-image.sh BINARY [KEY=VALUE...]   prints the pushed reference
#        (REGISTRY/REPOSITORY:TAG) on stdout; KEY=VALUE: extra image labels (another image of
#        the same binary, e.g. for the Helm upgrade and rollback scenario)
#        (BINARY: scripts/build-static.sh's target/x86_64-unknown-linux-gnu/release/pullsecret-injector)
# Env:   DIR (/tmp/psi-node), REG_PORT (5000), INJECTOR_REPO (private/pullsecret-injector),
#        INJECTOR_TAG (default: the first 12 hex digits of the binary's sha256),
#        DOCKERFILE (./Dockerfile)
# Needs: registry-up.sh (registry running, $DIR/registry/creds), umoci, skopeo, python3.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${1:-}
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "usage: $0 BINARY [KEY=VALUE...] (a static pullsecret-injector)" >&2; exit 2; }
shift
labels=()
for kv in "$@"; do labels+=(--label "$kv"); done
init_dir
reg_creds
TAG=${INJECTOR_TAG:-$(sha256sum "$BIN" | cut -c1-12)}
IMG=$REG/${INJECTOR_REPO:-private/pullsecret-injector}:$TAG
W=$DIR/injector-image/$TAG
rm -rf "$W" && mkdir -p "$W" && chmod 0700 "$W"
trap 'rm -f "$W/auth.json"' EXIT
skopeo login --authfile "$W/auth.json" --cert-dir "$DIR/registry/certs" -u "$REG_USER" --password-stdin "$REG" \
  <<<"$REG_PASS" >/dev/null
ref=$("$ROOT/scripts/build-image.sh" --binary "$BIN" --oci "$W/oci" --authfile "$W/auth.json" \
  --cert-dir "$DIR/registry/certs" "${labels[@]}" "$IMG")
echo "injector-image.sh: $ref" >&2
echo "$IMG"
