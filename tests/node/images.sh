#!/usr/bin/env bash
# Builds the two images the node needs besides the injector's, offline (no public registry is
# reachable, nothing is pulled):
#   $DIR/images/pause.tar   docker-archive tagged k8s.local/pause:psi-node: containerd's
#                           sandbox_image, imported by up.sh (never pulled). A static C program
#                           (gcc -static) that sleeps in pause(), reaps children, exits 0 on TERM.
#   $DIR/images/app         OCI layout, tag "1": busybox-static running `httpd -f -p 8080 -h /www`,
#                           which serves "hello from private/app:1". registry-up.sh pushes it to
#                           the private registry as 127.0.0.1:$REG_PORT/private/app:1.
#
# Usage: tests/node/images.sh     idempotent: does nothing when both exist; FORCE=1 rebuilds
# Env:   DIR (/tmp/psi-node), FORCE
# Tools: gcc + libc6-dev, umoci, skopeo, busybox-static (tests/node/deps.sh).
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_dir
OUT=$DIR/images
if [ -z "${FORCE:-}" ] && [ -s "$OUT/pause.tar" ] && [ -s "$OUT/app/index.json" ]; then
  echo "images.sh: $OUT/pause.tar and $OUT/app exist"
  exit 0
fi
for t in gcc umoci skopeo; do
  command -v "$t" >/dev/null || { echo "images.sh: $t missing (run tests/node/deps.sh)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "images.sh: /bin/busybox missing (busybox-static)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT/work"
cd "$OUT/work"

# --- pause: PID 1 of every Pod sandbox.
cat >pause.c <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void term(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, term);
  signal(SIGTERM, term);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
gcc -static -Os -s -o pause pause.c
umoci init --layout pause-oci
umoci new --image pause-oci:psi-node
umoci unpack --image pause-oci:psi-node pause-bundle >/dev/null
install -m 0755 pause pause-bundle/rootfs/pause
umoci repack --image pause-oci:psi-node pause-bundle
umoci config --image pause-oci:psi-node --config.entrypoint /pause --config.user 65535:65535
umoci gc --layout pause-oci
# A docker-archive carries repo:tag, so `ctr images import` names it exactly.
skopeo copy -q oci:pause-oci:psi-node docker-archive:"$OUT/pause.tar":k8s.local/pause:psi-node

# --- app: busybox with its applet links; httpd in the foreground on :8080.
umoci init --layout "$OUT/app"
umoci new --image "$OUT/app:1"
umoci unpack --image "$OUT/app:1" app-bundle >/dev/null
r=app-bundle/rootfs
mkdir -p "$r/bin" "$r/www" "$r/tmp" "$r/etc"
install -m 0755 /bin/busybox "$r/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"
done
echo "hello from private/app:1" >"$r/www/index.html"
echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
umoci repack --image "$OUT/app:1" app-bundle
umoci config --image "$OUT/app:1" --config.entrypoint /bin/httpd \
  --config.cmd=-f --config.cmd=-p --config.cmd=8080 --config.cmd=-h --config.cmd=/www \
  --config.exposedports 8080/tcp --config.env PATH=/bin
umoci gc --layout "$OUT/app"
cd "$OUT"
rm -rf "$OUT/work"
echo "images.sh: $OUT/pause.tar ($(du -h pause.tar | cut -f1)), $OUT/app ($(du -sh app | cut -f1))"
