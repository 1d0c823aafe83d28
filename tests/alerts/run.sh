#!/usr/bin/env bash
# Alert rules and dashboard of the Helm chart (templates/prometheusrule.yaml,
# templates/grafana-dashboard.yaml, dashboards/pullsecret-injector.json). Run from anywhere:
#   tests/alerts/run.sh
# 1. renders the chart with charts/pullsecret-injector/ci/monitoring-alerts-values.yaml (and
#    three more value sets) and extracts the PrometheusRule's spec.groups: the rules under
#    test are always the chart's own render;
# 2. check_render.py: rule shape, webhook-name regex against the rendered webhook
#    configuration, metric selectors, dashboard JSON and every metric name it and the rules use,
#    a firing and a non-firing case for every alert;
# 3. promtool check rules; promtool test rules alerts_test.yaml (annotations stripped) and
#    annotations_test.yaml (full render);
# 4. mutants: with every expr never true, exactly the firing cases must fail; with every expr
#    always true (for 0s), exactly the non-firing ones: no case passes vacuously.
# Installs what it needs (as root on Debian): Helm and Python tools via tests/chart/tools.sh
# into .tools/, promtool from Debian's prometheus package (only the promtool binary is
# unpacked into .tools/bin; nothing is installed system-wide, no service is started).
# Prints one PASS/FAIL line per check and exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
tools_install --no-checkov

install_promtool() {
  if command -v promtool >/dev/null; then PROMTOOL=$(command -v promtool); return 0; fi
  PROMTOOL="$TOOLS/bin/promtool"
  if [ -x "$PROMTOOL" ] && "$PROMTOOL" --version >/dev/null 2>&1; then return 0; fi
  command -v apt-get >/dev/null || { echo "FAIL promtool is not on PATH and apt-get is missing" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  echo "tools: fetching Debian's prometheus package for promtool" >&2
  if [ -z "${TOOLS_APT_UPDATED:-}" ]; then apt-get update -qq >&2; TOOLS_APT_UPDATED=1; fi
  chmod 777 "$tmp"  # apt's download sandbox user must be able to write there
  (cd "$tmp" && apt-get download -qq prometheus >&2)
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  install -m 0755 "$tmp/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
}
install_promtool
echo "promtool: $("$PROMTOOL" --version 2>&1 | head -n 1)"

CHART=charts/pullsecret-injector
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passes=0
fails=0
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
show() { sed 's/^/       /' "$1" | head -n "${2:-40}"; }
# Reads PASS/FAIL/NOTE lines of a checker into the counts.
collect() {
  while IFS= read -r line; do
    case $line in
      "PASS "*) pass "${line#PASS }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
      "NOTE "*) echo "$line" ;;
    esac
  done <"$1"
}

echo "--- render"
mkdir -p "$WORK/render"
render() {  # render NAME RELEASE NAMESPACE HELM_ARGS...
  local name=$1 release=$2 ns=$3; shift 3
  # The chart has no default image: every render here gets the same one.
  if "$HELM" template "$release" "$CHART" -n "$ns" --kube-version 1.33.0 \
      --set image.repository=registry.example.com/platform/pullsecret-injector "$@" >"$WORK/render/$name.yaml" 2>"$WORK/render.err"; then
    pass "helm template $name ($release in $ns $*)"
  else
    fail "helm template $name"; show "$WORK/render.err"; return 1
  fi
}
render main pullsecret-injector pullsecret-injector -f "$CHART/ci/monitoring-alerts-values.yaml"
render other acme tools --set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true
# (a values file: helm --set keeps 0.75 a string)
cat >"$WORK/selector-values.yaml" <<'EOF'
webhook:
  timeoutSeconds: 10
metrics:
  prometheusRule:
    enabled: true
    selector: job="injector",cluster="eu-1"
    controllerSelector: job="injector-controller",cluster="eu-1"
    latencyTimeoutFraction: 0.75
    certificateExpiryDays: 14
EOF
render selector pullsecret-injector pullsecret-injector -f "$WORK/selector-values.yaml"
render off pullsecret-injector pullsecret-injector
[ "$fails" = 0 ] || { echo "alerts: $passes passed, $fails failed"; exit 1; }

echo "--- rules and dashboard (check_render.py)"
"$PY" tests/alerts/check_render.py extract "$WORK/render/main.yaml" "$WORK/t" >"$WORK/extract.out" 2>&1 \
  || { fail "extract the PrometheusRule"; show "$WORK/extract.out"; echo "alerts: $passes passed, $fails failed"; exit 1; }
cat "$WORK/extract.out"
"$PY" tests/alerts/check_render.py check "$WORK/render" tests/alerts src "$CHART" >"$WORK/check.out" 2>&1 || true
collect "$WORK/check.out"
grep -qE '^(PASS|FAIL) ' "$WORK/check.out" || { fail "check_render.py check"; show "$WORK/check.out"; }

echo "--- promtool"
if "$PROMTOOL" check rules "$WORK/t/rules-full.yaml" >"$WORK/check-rules.out" 2>&1; then
  pass "promtool check rules: $(grep -o '[0-9]* rules found' "$WORK/check-rules.out")"
else
  fail "promtool check rules"; show "$WORK/check-rules.out"
fi
counts() {  # counts TEST_FILE: "G groups, C cases (F firing, Q non-firing)"
  "$PY" - "$1" <<'PY'
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))["tests"]
c = [a for g in t for a in g.get("alert_rule_test") or []]
f = sum(1 for a in c if a.get("exp_alerts"))
print(f"{len(t)} groups, {len(c)} alert cases ({f} firing, {len(c) - f} non-firing)")
PY
}
for f in alerts_test.yaml annotations_test.yaml; do
  if (cd "$WORK/t" && "$PROMTOOL" test rules "$f") >"$WORK/test.out" 2>&1; then
    pass "promtool test rules $f: $(counts "tests/alerts/$f")"
  else
    fail "promtool test rules $f"; show "$WORK/test.out" 200
  fi
done
for m in never always; do
  if (cd "$WORK/t/$m" && "$PROMTOOL" test rules alerts_test.yaml) >"$WORK/mutant.out" 2>&1; then
    fail "mutant '$m': promtool passed; the tests do not depend on the expressions"
  else
    "$PY" tests/alerts/check_render.py mutants tests/alerts/alerts_test.yaml "$m" "$WORK/mutant.out" >"$WORK/mutant.check" 2>&1 || true
    collect "$WORK/mutant.check"
    grep -qE '^(PASS|FAIL) ' "$WORK/mutant.check" || { fail "mutant '$m' check"; show "$WORK/mutant.check"; }
  fi
done

echo "--- lint"
if "$TOOLS/venv/bin/yamllint" -s -c tests/alerts/yamllint.yaml tests/alerts/alerts_test.yaml \
    tests/alerts/annotations_test.yaml >"$WORK/yamllint.out" 2>&1 \
   && "$TOOLS/venv/bin/yamllint" -s -c tests/chart/yamllint.yaml "$CHART/ci/monitoring-alerts-values.yaml" \
    >>"$WORK/yamllint.out" 2>&1; then
  pass "yamllint tests/alerts/*.yaml, ci/monitoring-alerts-values.yaml"
else
  fail "yamllint"; show "$WORK/yamllint.out"
fi
if "$TOOLS/venv/bin/shellcheck" -x tests/alerts/run.sh >"$WORK/shellcheck.out" 2>&1; then
  pass "shellcheck tests/alerts/run.sh"
else
  fail "shellcheck tests/alerts/run.sh"; show "$WORK/shellcheck.out"
fi

echo "alerts: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
