#!/usr/bin/env bash
# Latency below saturation, corrected for coordinated omission: the webhook served over TLS,
# HTTP/1.1 keep-alive, CONNS connections, the server pinned to CPU $SERVER_CPU and the load
# generator (oha) to CPU $CLIENT_CPU. First the maximum throughput (closed loop, as fast as
# the connections go, MAX_S seconds), then a constant request rate of each FRACTIONS percent
# of it for RATE_S seconds with `--latency-correction`: every request's latency is counted
# from the moment the schedule says it should have been sent, so a server stall delays (and
# counts against) every request scheduled behind it, instead of silently lowering the rate.
# Appends one row per run to OUT/rate-latency.tsv: achieved rate, p50, p90, p99, p99.9, max,
# server CPU per request.
#
# Usage: bench/rate-latency.sh 'SERVER_CMD' PORT URL_PATH
#   as bench/load.sh: SERVER_CMD may use $BENCH_CERTS/server.crt|server.key.
# Env: CONNS (50), MAX_S (20), RATE_S (30), FRACTIONS ("25 50 75"), MAX_RPS (measure it; set
#      to reuse a figure), OHA (oha on PATH or /root/bench-tools/bin/oha; install with
#      `cargo install oha --locked --root DIR`), LABEL, OUT (bench/out), CERTS (OUT/certs),
#      REVIEW (bench/review.json), SERVER_CPU (0), CLIENT_CPU (1).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVER_CMD=${1:?usage: rate-latency.sh SERVER_CMD PORT URL_PATH}
PORT=${2:?usage: rate-latency.sh SERVER_CMD PORT URL_PATH}
URL_PATH=${3:?usage: rate-latency.sh SERVER_CMD PORT URL_PATH}
first_word=${SERVER_CMD%% *}
LABEL=${LABEL:-$(basename "$first_word")}
CONNS=${CONNS:-50} MAX_S=${MAX_S:-20} RATE_S=${RATE_S:-30} FRACTIONS=${FRACTIONS:-"25 50 75"}
SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$BENCH_DIR/out}
CERTS=${CERTS:-$OUT/certs}
REVIEW=${REVIEW:-$BENCH_DIR/review.json}
OHA=${OHA:-$(command -v oha || echo /root/bench-tools/bin/oha)}
URL="https://127.0.0.1:${PORT}${URL_PATH}"
CLK_TCK=$(getconf CLK_TCK)
[ -x "$OHA" ] || { echo "rate-latency.sh: no oha ($OHA); cargo install oha --locked --root DIR, then OHA=DIR/bin/oha" >&2; exit 2; }
for tool in jq taskset ss curl; do command -v "$tool" >/dev/null || { echo "rate-latency.sh: missing $tool" >&2; exit 2; }; done
[ -f "$CERTS/ca.crt" ] || "$BENCH_DIR/certs.sh" "$CERTS" >/dev/null
export BENCH_CERTS=$CERTS BENCH_DIR
if [ -n "$(ss -Htln "sport = :$PORT")" ]; then
  echo "rate-latency.sh: port $PORT is already in use" >&2; exit 2
fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUNDIR=$OUT/runs/rate-$LABEL-$STAMP
mkdir -p "$RUNDIR"
TSV=$OUT/rate-latency.tsv
[ -s "$TSV" ] || printf 'utc\tlabel\toha\tconns\tload\ttarget_rps\tachieved_rps\trequests\tnon_2xx\tp50_ms\tp90_ms\tp99_ms\tp999_ms\tmax_ms\tsrv_cpu_us_per_req\tsrv_cpu_pct\tload1\n' >"$TSV"

SERVER_PID=
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$SERVER_PID" ] || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

echo "== $LABEL: starting on CPU $SERVER_CPU: $SERVER_CMD"
taskset -c "$SERVER_CPU" bash -c "exec $SERVER_CMD" >"$RUNDIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
  [ -d "/proc/$SERVER_PID" ] || { tail -20 "$RUNDIR/server.log" >&2; exit 1; }
  [ -n "$(ss -Htln "sport = :$PORT")" ] && break
  sleep 0.1
done
code=$(curl -sS --cacert "$CERTS/ca.crt" -H 'Content-Type: application/json' --data-binary @"$REVIEW" \
  -o "$RUNDIR/verify.json" -w '%{http_code}' "$URL")
[ "$code" = 200 ] && jq -e '.response.allowed == true' "$RUNDIR/verify.json" >/dev/null ||
  { echo "rate-latency.sh: VERIFY FAILED (HTTP $code)" >&2; exit 1; }

oha_run() { # NAME SECONDS [oha args...]  -> JSON in RUNDIR/NAME.json
  local name=$1 secs=$2; shift 2
  taskset -c "$CLIENT_CPU" "$OHA" --no-tui --output-format json --http-version 1.1 -c "$CONNS" -z "${secs}s" \
    --cacert "$CERTS/ca.crt" -m POST -T application/json -D "$REVIEW" "$@" "$URL" >"$RUNDIR/$name.json"
}
row() { # NAME LOAD TARGET
  local name=$1 load=$2 target=$3 json=$RUNDIR/$1.json
  local ms='(. // 0) * 1000 | . * 1000 | round / 1000'
  read -r achieved requests non2xx p50 p90 p99 p999 max < <(jq -r "[
      (.summary.requestsPerSec | round),
      ([.statusCodeDistribution[]] | add // 0),
      ([.statusCodeDistribution | to_entries[] | select(.key != \"200\") | .value] | add // 0),
      (.latencyPercentiles.p50 | $ms), (.latencyPercentiles.p90 | $ms), (.latencyPercentiles.p99 | $ms),
      (.latencyPercentiles[\"p99.9\"] | $ms), (.summary.slowest | $ms)] | @tsv" "$json")
  local cpu_us srv_pct
  cpu_us=$(awk -v d="$CPU_D" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN{ if (n > 0) printf "%.1f", d*1e6/hz/n; else print "NA" }')
  srv_pct=$(awk -v d="$CPU_D" -v hz="$CLK_TCK" -v s="$SECS" 'BEGIN{printf "%.0f", 100*d/hz/s}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$STAMP" "$LABEL" "$OHA_VERSION" "$CONNS" \
    "$load" "$target" "$achieved" "$requests" "$non2xx" "$p50" "$p90" "$p99" "$p999" "$max" "$cpu_us" "$srv_pct" "$LOAD1" >>"$TSV"
  printf '%-8s target=%-7s achieved=%-7s p50=%sms p90=%sms p99=%sms p99.9=%sms max=%sms srv_cpu=%sus/req (%s%% of a core) non-2xx=%s\n' \
    "$load" "$target" "$achieved" "$p50" "$p90" "$p99" "$p999" "$max" "$cpu_us" "$srv_pct" "$non2xx"
}
measure() { # NAME SECONDS LOAD TARGET [oha args...]
  local name=$1 secs=$2 load=$3 target=$4; shift 4
  LOAD1=$(cut -d' ' -f1 /proc/loadavg)
  local t0; t0=$(cpu_ticks)
  oha_run "$name" "$secs" "$@"
  CPU_D=$(( $(cpu_ticks) - t0 )) SECS=$secs
  row "$name" "$load" "$target"
}
OHA_VERSION=$("$OHA" --version | awk '{print $2}')
echo "oha $OHA_VERSION, $CONNS connections, HTTP/1.1 keep-alive"
oha_run warmup 3 >/dev/null
if [ -z "${MAX_RPS:-}" ]; then
  measure max "$MAX_S" max -
  MAX_RPS=$(jq -r '.summary.requestsPerSec | round' "$RUNDIR/max.json")
fi
for f in $FRACTIONS; do
  rate=$((MAX_RPS * f / 100))
  measure "rate-$f" "$RATE_S" "${f}%" "$rate" -q "$rate" --latency-correction
  sleep 1
done
stop_server
echo "rows appended to $TSV; raw oha JSON in $RUNDIR"
