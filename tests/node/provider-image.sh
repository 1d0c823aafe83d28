#!/usr/bin/env bash
# The credential-provider plugins' image for s7_minted_credentials (tests/node/story/minted.rs),
# the image a user names in the chart's credentialProviders.image: the test plugin psi-mint
# (tests/node/mint-provider.c, built static: the controller's image has no libc) in
# /credential-providers (the chart's credentialProviders.path), and busybox-static with its
# cp, which the chart's init container runs (cp -R /credential-providers/. BINDIR/). Built
# with umoci, offline, pushed to the private registry with skopeo (credentials through an auth
# file written by `skopeo login --password-stdin`, never on a command line).
#
# Usage: tests/node/provider-image.sh    prints the pushed reference on stdout
#        (127.0.0.1:$REG_PORT/private/psi-credential-providers:<sha256 of the plugin, 12 digits>);
#        the plugin stays in $DIR/images/providers/psi-mint (the story also runs it on the host)
# Env:   DIR (/tmp/psi-node), REG_PORT (5000)
# Needs: registry-up.sh (registry running, $DIR/registry/creds), gcc + libc6-dev, umoci,
#        skopeo, busybox-static (tests/node/deps.sh).
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for t in gcc umoci skopeo; do
  command -v "$t" >/dev/null || { echo "provider-image.sh: $t missing (run tests/node/deps.sh)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "provider-image.sh: /bin/busybox missing (busybox-static)" >&2; exit 1; }
init_dir
reg_creds
W=$DIR/images/providers
rm -rf "$W" && mkdir -p "$W" && chmod 0700 "$W"
trap 'rm -f "$W/auth.json"' EXIT
gcc -static -Os -s -Wall -Wextra -Werror -o "$W/psi-mint" "$NODE_LIB_DIR/mint-provider.c"
TAG=$(sha256sum "$W/psi-mint" | cut -c1-12)
IMG=$REG/private/psi-credential-providers:$TAG

umoci init --layout "$W/oci" >/dev/null
umoci new --image "$W/oci:$TAG" >/dev/null
umoci unpack --image "$W/oci:$TAG" "$W/bundle" >/dev/null
r=$W/bundle/rootfs
mkdir -p "$r/bin" "$r/credential-providers"
install -m 0755 /bin/busybox "$r/bin/busybox"
ln -s busybox "$r/bin/cp"
install -m 0755 "$W/psi-mint" "$r/credential-providers/psi-mint"
umoci repack --image "$W/oci:$TAG" "$W/bundle" >/dev/null
umoci config --image "$W/oci:$TAG" --config.env PATH=/bin --config.user 65532:65532 \
  --config.cmd=cp >/dev/null
umoci gc --layout "$W/oci"
rm -rf "$W/bundle"

skopeo login --authfile "$W/auth.json" --cert-dir "$DIR/registry/certs" -u "$REG_USER" --password-stdin "$REG" \
  <<<"$REG_PASS" >/dev/null
skopeo copy -q --authfile "$W/auth.json" --dest-cert-dir "$DIR/registry/certs" \
  "oci:$W/oci:$TAG" "docker://$IMG"
echo "provider-image.sh: $IMG (psi-mint $(du -h "$W/psi-mint" | cut -f1), busybox cp)" >&2
echo "$IMG"
