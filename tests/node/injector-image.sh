#!/usr/bin/env bash
# Packages a static pullsecret-injector binary as the OCI image the repository's Dockerfile
# describes, without a container engine, pushes it to the private registry, and checks what was
# pushed. The final stage of ./Dockerfile is read, not copied: FROM scratch, its LABELs, the
# COPY of the binary (destination, --chown, --chmod), USER, EXPOSE, ENTRYPOINT and CMD become the
# layer and the image config (umoci). Any other instruction in that stage stops the script, so a
# Dockerfile change cannot silently diverge from what the node runs.
#
# Usage: tests/node/injector-image.sh BINARY     prints the pushed reference on stdout
#        (BINARY: scripts/build-static.sh's target/x86_64-unknown-linux-gnu/release/pullsecret-injector)
# Env:   DIR (/tmp/psi-node), REG_PORT (5000), INJECTOR_REPO (private/pullsecret-injector),
#        INJECTOR_TAG (default: the first 12 hex digits of the binary's sha256),
#        DOCKERFILE (./Dockerfile)
# Needs: registry-up.sh (registry running, $DIR/registry/creds), umoci, skopeo, python3.
set -euo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${1:-}
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "usage: $0 BINARY (a static pullsecret-injector)" >&2; exit 2; }
BIN=$(readlink -f "$BIN")
if readelf -d "$BIN" 2>/dev/null | grep -q NEEDED; then
  echo "injector-image.sh: $BIN is dynamically linked; the image is scratch (build it with scripts/build-static.sh)" >&2
  exit 1
fi
init_dir
reg_creds
TAG=${INJECTOR_TAG:-$(sha256sum "$BIN" | cut -c1-12)}
IMG=$REG/${INJECTOR_REPO:-private/pullsecret-injector}:$TAG
W=$DIR/injector-image
rm -rf "$W" && mkdir -p "$W"

# The Dockerfile's final stage as lines: "copy DEST MODE UID GID", then one umoci config
# argument per line, then "expect JSON" (the image config fields the pushed image must have).
python3 - "${DOCKERFILE:-$ROOT/Dockerfile}" >"$W/plan" <<'PY'
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
    sys.exit(f"Dockerfile final stage: {msg} (tests/node/injector-image.sh must learn it)")
args, expect, copies = [], {"Labels": {}, "ExposedPorts": {}}, []
for l in stage[1:]:
    op, _, rest = l.partition(" ")
    op = op.upper()
    if op == "LABEL":
        for kv in shlex.split(rest):
            k, _, v = kv.partition("=")
            args.append(f"--config.label={k}={v}")
            expect["Labels"][k] = v
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
print("copy", *copies[0])
for a in args:
    print("arg", a)
print("expect", json.dumps(expect, sort_keys=True))
PY
read -r _ DEST MODE OUID OGID < <(grep '^copy ' "$W/plan")
mapfile -t CONFIG_ARGS < <(sed -n 's/^arg //p' "$W/plan")
EXPECT=$(sed -n 's/^expect //p' "$W/plan")

cd "$W"
umoci init --layout oci
umoci new --image oci:"$TAG"
umoci unpack --image oci:"$TAG" bundle >/dev/null
install -D -m "$MODE" -o "$OUID" -g "$OGID" "$BIN" "bundle/rootfs$DEST"
want="$(stat -c %A "bundle/rootfs$DEST") $OUID/$OGID ${DEST#/}"
umoci repack --image oci:"$TAG" bundle
umoci config --image oci:"$TAG" "${CONFIG_ARGS[@]}"
umoci gc --layout oci
rm -rf bundle

# What the Dockerfile promises, checked on the local layout before pushing: one layer holding
# exactly the binary with its mode and owner (and umoci's root directory entry "."), and the
# config fields.
manifest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' oci/index.json)
layers=$(python3 -c 'import json,sys; print(" ".join(l["digest"].split(":")[1] for l in json.load(open(sys.argv[1]))["layers"]))' "oci/blobs/sha256/$manifest")
entries=$(for l in $layers; do tar -tvzf "oci/blobs/sha256/$l" --numeric-owner; done |
  awk '$6 != "." && $6 != "./" { print $1, $2, $6 }')
if [ "$entries" != "$want" ]; then
  echo "injector-image.sh: the layer holds '$entries', want exactly '$want'" >&2
  exit 1
fi

skopeo copy -q --dest-cert-dir "$DIR/registry/certs" --dest-creds "$REG_USER:$REG_PASS" \
  "oci:$W/oci:$TAG" "docker://$IMG"
skopeo inspect --config --cert-dir "$DIR/registry/certs" --creds "$REG_USER:$REG_PASS" "docker://$IMG" >config.json
python3 - "$EXPECT" config.json <<'PY'
import json, sys
want = json.loads(sys.argv[1])
cfg = json.load(open(sys.argv[2]))
got = cfg.get("config", {})
bad = [f"{k}: want {v!r}, got {got.get(k)!r}" for k, v in want.items() if (got.get(k) or {} if isinstance(v, dict) else got.get(k)) != v]
if cfg.get("os") != "linux" or cfg.get("architecture") != "amd64":
    bad.append(f"platform {cfg.get('os')}/{cfg.get('architecture')}, want linux/amd64")
if bad:
    sys.exit("injector-image.sh: pushed image config differs from the Dockerfile:\n  " + "\n  ".join(bad))
PY
digest=$(skopeo inspect --cert-dir "$DIR/registry/certs" --creds "$REG_USER:$REG_PASS" --format '{{.Digest}}' "docker://$IMG")
echo "injector-image.sh: pushed $IMG@$digest ($entries; user $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["User"])' config.json))" >&2
echo "$IMG"
