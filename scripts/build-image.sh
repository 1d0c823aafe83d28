#!/usr/bin/env bash
# Builds the injector's OCI image from the static binary without a container engine (umoci,
# skopeo: no Docker daemon, no root needed), checks it, and pushes it to the registry you name.
# The image is what ./Dockerfile's final stage describes, read from that file rather than copied:
# FROM scratch, its LABELs, the COPY of the binary (destination, --chown, --chmod), USER,
# EXPOSE, ENTRYPOINT and CMD become the one layer and the image config. Any other instruction
# in that stage stops the script, so the Dockerfile and this image cannot drift apart.
#
# Usage: scripts/build-image.sh [OPTIONS] REGISTRY/REPOSITORY:TAG
#   e.g. scripts/build-static.sh
#        skopeo login registry.example.com -u USER --password-stdin <token-file
#        scripts/build-image.sh registry.example.com/platform/pullsecret-injector:0.1.0
# Options:
#   --binary FILE        the static binary (default: scripts/build-static.sh's
#                        target/x86_64-unknown-linux-gnu/release/pullsecret-injector)
#   --arch amd64|arm64   the image's architecture (default: the binary's, from its ELF header)
#   --label KEY=VALUE    one more image label (repeatable), e.g. org.opencontainers.image.version=0.1.0
#   --oci DIR            write the OCI layout to DIR and keep it (default: a temporary directory)
#   --no-push            build and check only (with --oci: a layout to copy later with skopeo)
#   --authfile FILE      registry credentials as `skopeo login` or `docker login` write them
#                        (default: skopeo's own, $XDG_RUNTIME_DIR/containers/auth.json, which
#                        `skopeo login` writes; then ~/.docker/config.json)
#   --dest-creds USER[:PASSWORD]  credentials on the command line instead. Other users of this
#                        machine can read a command line: prefer `skopeo login --password-stdin`
#   --cert-dir DIR       trust the CA certificates (*.crt) in DIR for this registry
#   --tls-verify=false   push over plain HTTP, or without verifying the registry's certificate
#                        (default: HTTPS, certificate verified)
# Env:   DOCKERFILE (./Dockerfile)
# Prints REGISTRY/REPOSITORY:TAG@sha256:DIGEST on stdout (the reference to put in the chart:
# image.repository, image.digest); what it did on stderr. Credentials are never printed.
# Needs: umoci, skopeo, python3, readelf (Debian: apt-get install umoci skopeo python3 binutils).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
die() { echo "build-image.sh: $*" >&2; exit 1; }

BIN=$ROOT/target/x86_64-unknown-linux-gnu/release/pullsecret-injector
ARCH="" OCI="" PUSH=1 IMAGE=""
LABELS=() AUTH=() INSPECT_AUTH=()
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BIN=${2:?--binary FILE}; shift ;;
    --binary=*) BIN=${1#*=} ;;
    --arch) ARCH=${2:?--arch amd64|arm64}; shift ;;
    --arch=*) ARCH=${1#*=} ;;
    --label) LABELS+=("${2:?--label KEY=VALUE}"); shift ;;
    --label=*) LABELS+=("${1#*=}") ;;
    --oci) OCI=${2:?--oci DIR}; shift ;;
    --oci=*) OCI=${1#*=} ;;
    --no-push) PUSH=0 ;;
    --authfile) AUTH+=(--dest-authfile "${2:?--authfile FILE}"); INSPECT_AUTH+=(--authfile "$2"); shift ;;
    --authfile=*) AUTH+=(--dest-authfile "${1#*=}"); INSPECT_AUTH+=(--authfile "${1#*=}") ;;
    --dest-creds) AUTH+=(--dest-creds "${2:?--dest-creds USER[:PASSWORD]}"); INSPECT_AUTH+=(--creds "$2"); shift ;;
    --dest-creds=*) AUTH+=(--dest-creds "${1#*=}"); INSPECT_AUTH+=(--creds "${1#*=}") ;;
    --cert-dir) AUTH+=(--dest-cert-dir "${2:?--cert-dir DIR}"); INSPECT_AUTH+=(--cert-dir "$2"); shift ;;
    --cert-dir=*) AUTH+=(--dest-cert-dir "${1#*=}"); INSPECT_AUTH+=(--cert-dir "${1#*=}") ;;
    --tls-verify=true | --tls-verify=false) AUTH+=("--dest-${1#--}"); INSPECT_AUTH+=("$1") ;;
    --tls-verify) AUTH+=(--dest-tls-verify="${2:?--tls-verify true|false}"); INSPECT_AUTH+=(--tls-verify="$2"); shift ;;
    -h | --help) usage 0 ;;
    -*) echo "build-image.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$IMAGE" ] || { echo "build-image.sh: one image reference only" >&2; usage; }; IMAGE=$1 ;;
  esac
  shift
done
if [ "$PUSH" = 1 ] && [ -z "$IMAGE" ]; then echo "build-image.sh: name the image to push (or --no-push)" >&2; usage; fi
for t in umoci skopeo python3 readelf; do
  command -v "$t" >/dev/null || die "$t is missing (Debian: apt-get install umoci skopeo python3 binutils)"
done

# The reference: REGISTRY/REPOSITORY:TAG, a tag and no digest (the digest is the result).
TAG=latest
if [ -n "$IMAGE" ]; then
  case $IMAGE in
    *@*) die "$IMAGE: name a tag, not a digest (the digest is printed after the push)" ;;
    docker://* | oci:* | *://*) die "$IMAGE: give REGISTRY/REPOSITORY:TAG without a transport" ;;
  esac
  last=${IMAGE##*/}
  case $last in
    *:*) TAG=${last##*:} ;;
    *) die "$IMAGE: name a tag (REGISTRY/REPOSITORY:TAG), e.g. the version: :0.1.0" ;;
  esac
  case $IMAGE in */*) ;; *) die "$IMAGE: name the registry too (REGISTRY/REPOSITORY:TAG)" ;; esac
fi

[ -f "$BIN" ] && [ -x "$BIN" ] || die "no executable binary at $BIN (build it with scripts/build-static.sh, or pass --binary)"
BIN=$(readlink -f "$BIN")
# The image is scratch: nothing to load a library or an interpreter from.
if readelf -l "$BIN" 2>/dev/null | grep -q 'Requesting program interpreter' || readelf -d "$BIN" 2>/dev/null | grep -q NEEDED; then
  die "$BIN is dynamically linked; the image is scratch (build it with scripts/build-static.sh)"
fi
machine=$(readelf -h "$BIN" | sed -n 's/^ *Machine: *//p')
case $machine in
  *X86-64*) bin_arch=amd64 ;;
  *AArch64*) bin_arch=arm64 ;;
  *) die "$BIN: unsupported machine '$machine' (amd64 and arm64 are)" ;;
esac
ARCH=${ARCH:-$bin_arch}
case $ARCH in amd64 | arm64) ;; *) die "--arch $ARCH: amd64 or arm64" ;; esac
[ "$ARCH" = "$bin_arch" ] || die "--arch $ARCH, but $BIN is built for $bin_arch"

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
if [ -z "$OCI" ]; then OCI=$W/oci; else rm -rf "$OCI"; mkdir -p "$(dirname "$OCI")"; OCI=$(readlink -f "$(dirname "$OCI")")/$(basename "$OCI"); fi

# The Dockerfile's final stage as lines: "copy DEST MODE UID GID", then one umoci config
# argument per line, then "expect JSON" (the config fields the image must have).
python3 - "${DOCKERFILE:-$ROOT/Dockerfile}" "${LABELS[@]}" >"$W/plan" <<'PY'
import json, shlex, sys
lines, cur = [], ""
for raw in open(sys.argv[1], encoding="utf-8"):
    s = raw.rstrip("\n")
    if not cur and (s.strip().startswith("#") or not s.strip()):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append((cur + s).strip())
    cur = ""
froms = [i for i, l in enumerate(lines) if l.split()[0].upper() == "FROM"]
stage = lines[froms[-1]:]
if stage[0].split()[1] != "scratch":
    sys.exit(f"final stage is not FROM scratch: {stage[0]}")
def fail(msg):
    sys.exit(f"Dockerfile final stage: {msg} (scripts/build-image.sh must learn it)")
args, expect, copies = [], {"Labels": {}, "ExposedPorts": {}}, []
def label(k, v):
    args.append(f"--config.label={k}={v}")
    expect["Labels"][k] = v
for l in stage[1:]:
    op, _, rest = l.partition(" ")
    op = op.upper()
    if op == "LABEL":
        for kv in shlex.split(rest):
            k, _, v = kv.partition("=")
            label(k, v)
    elif op == "COPY":
        words = shlex.split(rest)
        flags = {w.split("=", 1)[0]: w.split("=", 1)[1] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        if len(paths) != 2 or "--from" not in flags or not paths[1].startswith("/"):
            fail(f"unexpected COPY: {l}")
        uid, _, gid = flags.get("--chown", "0:0").partition(":")
        copies.append((paths[1], flags.get("--chmod", "0755"), uid, gid or uid))
    elif op == "USER":
        args.append(f"--config.user={rest.strip()}")
        expect["User"] = rest.strip()
    elif op == "EXPOSE":
        for p in rest.split():
            p = p if "/" in p else p + "/tcp"
            args.append(f"--config.exposedports={p}")
            expect["ExposedPorts"][p] = {}
    elif op in ("ENTRYPOINT", "CMD"):
        v = json.loads(rest)
        key = "Entrypoint" if op == "ENTRYPOINT" else "Cmd"
        args += [f"--config.{key.lower()}={a}" for a in v]
        expect[key] = v
    else:
        fail(f"instruction {op} not supported")
if len(copies) != 1:
    fail(f"expected exactly one COPY of the binary, got {len(copies)}")
for kv in sys.argv[2:]:
    k, eq, v = kv.partition("=")
    if not eq or not k:
        sys.exit(f"--label {kv}: want KEY=VALUE")
    label(k, v)
print("copy", *copies[0])
for a in args:
    print("arg", a)
print("expect", json.dumps(expect, sort_keys=True))
PY
read -r _ DEST MODE OUID OGID < <(grep '^copy ' "$W/plan")
mapfile -t CONFIG_ARGS < <(sed -n 's/^arg //p' "$W/plan")
EXPECT=$(sed -n 's/^expect //p' "$W/plan")

# One layer: the binary, with the Dockerfile's mode and owner. As root the file gets that
# owner; otherwise umoci works rootless and records this user's files as 0:0.
umoci init --layout "$OCI"
umoci new --image "$OCI:$TAG"
if [ "$(id -u)" = 0 ]; then
  umoci unpack --image "$OCI:$TAG" "$W/bundle" >/dev/null
  install -D -m "$MODE" -o "$OUID" -g "$OGID" "$BIN" "$W/bundle/rootfs$DEST"
else
  [ "$OUID:$OGID" = 0:0 ] || die "the Dockerfile's COPY --chown=$OUID:$OGID needs root (rootless, files are 0:0)"
  umoci unpack --rootless --image "$OCI:$TAG" "$W/bundle" >/dev/null
  install -D -m "$MODE" "$BIN" "$W/bundle/rootfs$DEST"
fi
want="$(stat -c %A "$W/bundle/rootfs$DEST") $OUID/$OGID ${DEST#/}"
umoci repack --image "$OCI:$TAG" "$W/bundle"
rm -rf "$W/bundle"
umoci config --image "$OCI:$TAG" --os linux --architecture "$ARCH" "${CONFIG_ARGS[@]}"
umoci gc --layout "$OCI"

# What the Dockerfile promises, checked on the layout before anything is pushed.
python3 - "$OCI" "$TAG" "$EXPECT" "$ARCH" "$want" >"$W/checked" <<'PY'
import json, stat, sys, tarfile
oci, tag, want_cfg, arch, want_entry = sys.argv[1:6]
blob = lambda d: f"{oci}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{oci}/index.json"))
(m,) = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
manifest = json.load(open(blob(m["digest"])))
entries = []
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"])) as t:
        for e in t.getmembers():
            if e.name.strip("./") == "":
                continue
            entries.append(f"{stat.filemode(e.mode | (stat.S_IFREG if e.isfile() else 0))} {e.uid}/{e.gid} {e.name.lstrip('./')}")
bad = []
if entries != [want_entry]:
    bad.append(f"the layer holds {entries}, want exactly ['{want_entry}']")
cfg = json.load(open(blob(manifest["config"]["digest"])))
got = cfg.get("config", {})
for k, v in json.loads(want_cfg).items():
    g = got.get(k) or ({} if isinstance(v, dict) else None)
    if g != v:
        bad.append(f"config {k}: want {v!r}, got {g!r}")
if (cfg.get("os"), cfg.get("architecture")) != ("linux", arch):
    bad.append(f"platform {cfg.get('os')}/{cfg.get('architecture')}, want linux/{arch}")
if bad:
    sys.exit("build-image.sh: the image differs from the Dockerfile:\n  " + "\n  ".join(bad))
print(m["digest"])
print(f"{entries[0]}, user {got.get('User')}, linux/{arch}")
PY
{ read -r DIGEST; read -r WHAT; } <"$W/checked"
if [ "$PUSH" = 0 ]; then
  echo "build-image.sh: built $OCI:$TAG ($WHAT), $DIGEST; not pushed" >&2
  [ "$OCI" != "$W/oci" ] || echo "build-image.sh: the layout was temporary (keep one with --oci DIR)" >&2
  echo "$DIGEST"
  exit 0
fi

# The push keeps the manifest as built (--preserve-digests), so the digest checked above is
# the one the registry serves; then the pushed config is read back and checked again.
skopeo copy -q --preserve-digests --digestfile "$W/digest" "${AUTH[@]}" "oci:$OCI:$TAG" "docker://$IMAGE"
pushed=$(cat "$W/digest")
[ "$pushed" = "$DIGEST" ] || die "the registry has $IMAGE as $pushed, built $DIGEST"
skopeo inspect --config "${INSPECT_AUTH[@]}" "docker://${IMAGE%:*}@$DIGEST" >"$W/pushed-config.json"
python3 - "$W/pushed-config.json" "$EXPECT" "$ARCH" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
got = cfg.get("config", {})
bad = [f"{k}: want {v!r}, got {got.get(k)!r}" for k, v in json.loads(sys.argv[2]).items()
       if (got.get(k) or ({} if isinstance(v, dict) else None)) != v]
if (cfg.get("os"), cfg.get("architecture")) != ("linux", sys.argv[3]):
    bad.append(f"platform {cfg.get('os')}/{cfg.get('architecture')}, want linux/{sys.argv[3]}")
if bad:
    sys.exit("build-image.sh: the pushed image config differs from the Dockerfile:\n  " + "\n  ".join(bad))
PY
echo "build-image.sh: pushed $IMAGE@$DIGEST ($WHAT)" >&2
echo "$IMAGE@$DIGEST"
