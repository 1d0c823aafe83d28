#!/usr/bin/env bash
# Starts the private registry (Debian's docker-registry = distribution 2.8) on
# https://127.0.0.1:$REG_PORT (default 5000) with its own CA and htpasswd (bcrypt) auth, makes
# the node's containerd trust that CA, pushes the app image (images.sh) as
# 127.0.0.1:$REG_PORT/private/app:1, and checks that an anonymous read is refused.
#
# Usage: tests/node/registry-up.sh        restarts the registry if it runs; keeps CA and data
# Env:   DIR (/tmp/psi-node), REG_PORT (5000), REG_USER (psi), REG_PASS (random, first run)
# Writes $DIR/registry/:
#   ca.crt              the registry's CA (certs/ca.crt: the same, as skopeo --cert-dir wants)
#   creds               USER:PASS (read by injector-image.sh and the story, tests/node/story/)
#   htpasswd, config.yml, registry.{crt,key}, data/ (blobs), registry.{pid,log}
#   $DIR/containerd/certs.d/127.0.0.1:$REG_PORT/hosts.toml   containerd's trust (up.sh's config)
# Stopped by down.sh.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for t in docker-registry htpasswd skopeo openssl curl; do
  command -v "$t" >/dev/null || { echo "registry-up.sh: $t missing (run tests/node/deps.sh)" >&2; exit 1; }
done
init_dir
R=$DIR/registry
mkdir -p "$R/data" "$R/certs"
"$NODE_LIB_DIR/images.sh" >/dev/null

if [ ! -s "$R/ca.crt" ]; then
  (
    cd "$R"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
      -subj /CN=psi-node-registry-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout registry.key -out registry.csr -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in registry.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out registry.crt \
      -days 30 -extfile san.ext 2>/dev/null
    chmod 0644 ca.crt registry.crt
  )
  cp "$R/ca.crt" "$R/certs/ca.crt"
fi
if [ ! -s "$R/creds" ]; then
  printf '%s:%s\n' "${REG_USER:-psi}" "${REG_PASS:-$(openssl rand -hex 12)}" >"$R/creds"
  chmod 0600 "$R/creds"
fi
reg_creds
htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$R/htpasswd"
cat >"$R/config.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $R/data}
  delete: {enabled: true}
http:
  addr: $REG
  secret: $(openssl rand -hex 16)
  tls: {certificate: $R/registry.crt, key: $R/registry.key}
auth:
  htpasswd: {realm: psi-node-registry, path: $R/htpasswd}
YML

proc_stop "$R/registry.pid" "$R/config.yml"
if (exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null; then
  echo "registry-up.sh: 127.0.0.1:$REG_PORT is already in use (set REG_PORT)" >&2
  exit 1
fi
setsid docker-registry serve "$R/config.yml" >>"$R/registry.log" 2>&1 </dev/null &
echo $! >"$R/registry.pid"
# Up = /v2/ answers 401 (auth required) over TLS signed by our CA.
v2_is_401() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$R/ca.crt" "https://$REG/v2/")" = 401 ]
}
wait_until 30 "registry on https://$REG/v2/ answering 401" "$R/registry.log" v2_is_401
proc_alive "$R/registry.pid" "$R/config.yml" || { echo "registry-up.sh: registry exited" >&2; tail -n 20 "$R/registry.log" >&2; exit 1; }

# containerd's trust for this host (CRI registry.config_path = $DIR/containerd/certs.d).
# containerd 1.6 rejects a hosts.toml without a [host] table ("invalid `host` tree": pulls then
# fail with 400), and it also tries `server` as a fallback: the CA goes on both.
mkdir -p "$DIR/containerd/certs.d/$REG"
cat >"$DIR/containerd/certs.d/$REG/hosts.toml" <<TOML
server = "https://$REG"
ca = "$R/ca.crt"

[host."https://$REG"]
  capabilities = ["pull", "resolve"]
  ca = "$R/ca.crt"
TOML

skopeo copy -q --dest-cert-dir "$R/certs" --dest-creds "$REG_USER:$REG_PASS" \
  "oci:$DIR/images/app:1" "docker://$REG/private/app:1"
# The registry must really be private: anonymous reads fail, authenticated ones work.
if skopeo inspect --cert-dir "$R/certs" --no-creds "docker://$REG/private/app:1" >/dev/null 2>"$R/anon.err"; then
  echo "registry-up.sh: an anonymous read of $REG/private/app:1 succeeded: the registry is not private" >&2
  exit 1
fi
grep -qi 'unauthorized\|authentication required' "$R/anon.err" ||
  { echo "registry-up.sh: anonymous read failed for another reason:" >&2; cat "$R/anon.err" >&2; exit 1; }
digest=$(skopeo inspect --cert-dir "$R/certs" --creds "$REG_USER:$REG_PASS" --format '{{.Digest}}' \
  "docker://$REG/private/app:1")
echo "registry-up.sh: https://$REG (user $REG_USER, CA $R/ca.crt): $REG/private/app:1@$digest; anonymous read refused"
