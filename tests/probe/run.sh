#!/usr/bin/env bash
# The credential probe against the real distribution registry (Debian's `docker-registry`):
# TLS on loopback (a throwaway CA from openssl, handed to the probe through SSL_CERT_FILE),
# first with htpasswd auth (Basic), then with token auth (Bearer: the token server runs inside
# tests/probe.rs). Each auth is probed with the right password (accepted) and a wrong one
# (rejected). Installs docker-registry and apache2-utils (htpasswd) with apt-get when missing.
#
#   tests/probe/run.sh            # CARGO_TARGET_DIR is honoured
set -euo pipefail
cd "$(dirname "$0")/../.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need docker-registry || ! need htpasswd || ! need openssl; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry apache2-utils openssl >/dev/null
fi

work=$(mktemp -d)
registry_pid=""
cleanup() {
    if [[ -n "$registry_pid" ]]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
registry_port=$(free_port)
token_port=$(free_port)
registry="127.0.0.1:$registry_port"

# A CA, the server certificate (registry and token realm) and the token signing key.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=probe test CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/san.ext" -out "$work/server.crt" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/signer.key" 2>/dev/null
openssl req -x509 -key "$work/signer.key" -days 1 -subj "/CN=probe token signer" \
    -out "$work/signer.crt" 2>/dev/null

user=probe-user
password="right-$(openssl rand -hex 8)"
htpasswd -Bbn "$user" "$password" >"$work/htpasswd" 2>/dev/null

write_config() { # $1: the auth block
    cat >"$work/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: $registry
  tls:
    certificate: $work/server.crt
    key: $work/server.key
$1
YAML
}

start_registry() {
    docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        if curl -s -o /dev/null --cacert "$work/ca.crt" "https://$registry/v2/"; then return 0; fi
        sleep 0.1
    done
    echo "registry did not start:"; cat "$work/registry.log"; exit 1
}

stop_registry() {
    kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true; registry_pid=""
}

cargo test --offline --test probe --no-run -q 2>/dev/null || cargo test --test probe --no-run -q

probe() { # $1: auth kind, $2: password, $3: expected, then an env(1) prefix
    echo "== $1, $3 ($([[ "$2" == "$password" ]] && echo right || echo wrong) password)"
    local out rc=0
    out=$(SSL_CERT_FILE="$work/ca.crt" PROBE_REGISTRY="$registry" PROBE_USERNAME="$user" \
        PROBE_PASSWORD="$2" PROBE_EXPECT="$3" "${@:4}" \
        cargo test --offline -q --test probe -- --ignored 2>&1) || rc=$?
    grep -E 'test result' <<<"$out" || true
    if [[ $rc -ne 0 ]]; then
        echo "$out"; echo "--- registry log"; tail -20 "$work/registry.log"; exit 1
    fi
}

write_config "auth:
  htpasswd:
    realm: probe-basic
    path: $work/htpasswd"
start_registry
curl -s -D - -o /dev/null --cacert "$work/ca.crt" "https://$registry/v2/" | grep -i '^www-authenticate' | tr -d '\r'
probe basic "$password" accepted env
probe basic "wrong-password" rejected env
stop_registry

token_env=(env PROBE_TOKEN_LISTEN="127.0.0.1:$token_port" PROBE_TLS_CERT="$work/server.crt"
    PROBE_TLS_KEY="$work/server.key" PROBE_TOKEN_KEY="$work/signer.key"
    PROBE_TOKEN_CERT="$work/signer.crt" PROBE_TOKEN_ISSUER=probe-issuer
    PROBE_TOKEN_SERVICE=probe-registry PROBE_TOKEN_USERNAME="$user"
    PROBE_TOKEN_PASSWORD="$password")
write_config "auth:
  token:
    realm: https://127.0.0.1:$token_port/token
    service: probe-registry
    issuer: probe-issuer
    rootcertbundle: $work/signer.crt"
start_registry
curl -s -D - -o /dev/null --cacert "$work/ca.crt" "https://$registry/v2/" | grep -i '^www-authenticate' | tr -d '\r'
probe token "$password" accepted "${token_env[@]}"
probe token "wrong-password" rejected "${token_env[@]}"
stop_registry
echo "probe: all four cases passed"
