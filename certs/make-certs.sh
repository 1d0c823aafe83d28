#!/usr/bin/env bash
# Makes a development CA and a serving certificate for pullsecret-injector (local runs, tests).
# Usage: certs/make-certs.sh [--service NAME] [--namespace NS] [--out DIR] [--days N]
#   defaults: --service pullsecret-injector --namespace pullsecret-injector --out certs/out --days 365
# Writes DIR/ca.crt, DIR/ca.key (EC P-256 CA) and DIR/tls.crt, DIR/tls.key (EC P-256, PKCS#8)
# with SANs svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local, localhost, 127.0.0.1, ::1 and
# extendedKeyUsage serverAuth; prints the base64 caBundle for a webhook configuration.
# An existing CA in DIR is reused, so a re-run renews the serving certificate only.
set -euo pipefail
SERVICE=pullsecret-injector NS=pullsecret-injector DAYS=365
OUT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/out
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --service) SERVICE=${2:?}; shift 2 ;;
    --namespace) NS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --days) DAYS=${2:?}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "make-certs.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done
[[ $DAYS =~ ^[1-9][0-9]*$ ]] || { echo "make-certs.sh: --days must be a positive integer" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is required" >&2; exit 1; }
mkdir -p "$OUT"
umask 077
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ ! -s "$OUT/ca.crt" ] || [ ! -s "$OUT/ca.key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/ca.key"
  openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days $((DAYS * 2)) -subj "/CN=pullsecret-injector dev CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$OUT/ca.crt"
  echo "new CA: $OUT/ca.crt" >&2
else
  echo "reusing CA: $OUT/ca.crt" >&2
fi

# genpkey writes PKCS#8 ("BEGIN PRIVATE KEY").
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/tls.key"
cat >"$TMP/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SERVICE,DNS:$SERVICE.$NS,DNS:$SERVICE.$NS.svc,DNS:$SERVICE.$NS.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl req -new -key "$OUT/tls.key" -subj "/CN=$SERVICE.$NS.svc" -out "$TMP/tls.csr"
openssl x509 -req -in "$TMP/tls.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
  -CAserial "$TMP/ca.srl" -sha256 -days "$DAYS" -extfile "$TMP/ext.cnf" -out "$OUT/tls.crt" 2>/dev/null
openssl verify -CAfile "$OUT/ca.crt" -purpose sslserver "$OUT/tls.crt" >/dev/null
chmod 0644 "$OUT/ca.crt" "$OUT/tls.crt"

echo "serving certificate: $OUT/tls.crt, key: $OUT/tls.key (valid $DAYS days)" >&2
echo "  SANs: $SERVICE, $SERVICE.$NS, $SERVICE.$NS.svc, $SERVICE.$NS.svc.cluster.local, localhost, 127.0.0.1, ::1" >&2
echo "caBundle (base64 of $OUT/ca.crt):" >&2
base64 -w0 "$OUT/ca.crt"
echo
