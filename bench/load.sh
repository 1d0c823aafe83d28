#!/usr/bin/env bash
# Load benchmark of a mutating admission webhook over TLS (h2load), adapted from the team's
# shared harness so the project stands alone. See docs/performance.md for results.
#
# Usage: run.sh 'SERVER_CMD' PORT URL_PATH
#   SERVER_CMD  command line that starts the server in the foreground on
#               127.0.0.1:PORT with TLS (run via `bash -c "exec SERVER_CMD"`, so
#               $BENCH_CERTS/server.crt, $BENCH_CERTS/server.key, $BENCH_DIR may
#               be used inside single quotes).
#   PORT        TCP port on 127.0.0.1 the server listens on (must be free).
#   URL_PATH    path that receives the AdmissionReview POST, e.g. /mutate
#
# The server is pinned to CPU $SERVER_CPU and the load generator (h2load) to
# CPU $CLIENT_CPU. Every load run is bounded by a request count (N) and a time
# limit (RUN_TIMEOUT). The server is stopped (by its pid) when the script exits.
#
# Environment (defaults in brackets):
#   LABEL [basename of SERVER_CMD's first word]  name in the results
#   TAG [r1]            free-form run tag (e.g. r1, r2 for repeated rounds)
#   N [200000]          requests per scenario
#   WARMUP [5000]       warm-up requests (h2, 10x10) before measuring; 0 = none
#   SCENARIOS ["h2:1:1 h2:10:10 h2:50:1 h1:10:1"]  proto:clients:streams
#   RUN_TIMEOUT [180]   seconds per scenario (h2load is killed after that)
#   RPS [0]             requests per second per client (h2load --rps): an open-ish load below
#                       saturation, for latency at a given rate; 0 = as fast as possible
#   SERVER_CPU [0] CLIENT_CPU [1]
#   OUT [bench-out]     results.tsv is appended there; raw logs in OUT/runs/
#   CERTS [OUT/certs]   made with certs.sh if missing (exported as BENCH_CERTS)
#   REVIEW [bench/review.json]  request body
#   STARTUP_TIMEOUT [30] seconds to wait for the port
#   KEEP_LOGS [0]       1 = keep h2load's per-request logs (~7 MB per scenario)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVER_CMD=${1:?usage: run.sh SERVER_CMD PORT URL_PATH}
PORT=${2:?usage: run.sh SERVER_CMD PORT URL_PATH}
URL_PATH=${3:?usage: run.sh SERVER_CMD PORT URL_PATH}
first_word=${SERVER_CMD%% *}
LABEL=${LABEL:-$(basename "$first_word")}
TAG=${TAG:-r1}
N=${N:-200000}
WARMUP=${WARMUP:-5000}
SCENARIOS=${SCENARIOS:-"h2:1:1 h2:10:10 h2:50:1 h1:10:1"}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$BENCH_DIR/../bench-out}
CERTS=${CERTS:-$OUT/certs}
REVIEW=${REVIEW:-$BENCH_DIR/review.json}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-30}
URL="https://127.0.0.1:${PORT}${URL_PATH}"
CLK_TCK=$(getconf CLK_TCK)

for tool in h2load curl jq taskset openssl ss timeout; do
  command -v "$tool" >/dev/null || { echo "run.sh: missing $tool (apt-get install nghttp2-client curl jq util-linux openssl iproute2)" >&2; exit 2; }
done
[ -f "$REVIEW" ] || { echo "run.sh: no request body $REVIEW" >&2; exit 2; }
[ -f "$CERTS/ca.crt" ] || "$BENCH_DIR/certs.sh" "$CERTS" >/dev/null
export BENCH_CERTS=$CERTS BENCH_DIR
UID_WANT=$(jq -r .request.uid "$REVIEW")

if [ -n "$(ss -Htln "sport = :$PORT")" ]; then
  echo "run.sh: port $PORT is already in use; refusing to benchmark someone else's server" >&2
  exit 2
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUNDIR=$OUT/runs/$LABEL-$TAG-$STAMP
mkdir -p "$RUNDIR"
TSV=$OUT/results.tsv
HEADER="utc	label	tag	scenario	alpn	clients	streams	requests	ok_2xx	failed	secs	rps	mean_us	p50_us	p99_us	max_us	srv_cpu_us_per_req	srv_cpu_pct	cli_cpu_pct	srv_rss_start_kb	srv_rss_peak_kb	load1"
[ -s "$TSV" ] || echo "$HEADER" > "$TSV"

# ---- server process helpers ----
SERVER_PID=
tree_pids() {  # the server pid and all its descendants
  local -a todo=("$1") all=()
  while [ ${#todo[@]} -gt 0 ]; do
    local p=${todo[0]}; todo=("${todo[@]:1}")
    [ -d /proc/$p ] || continue
    all+=("$p")
    local c; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do todo+=("$c"); done
  done
  echo "${all[@]}"
}
cpu_ticks() {  # utime+stime (clock ticks) summed over the server's process tree
  local sum=0 p f
  for p in $(tree_pids "$SERVER_PID"); do
    f=$(sed 's/^.*) //' /proc/$p/stat 2>/dev/null) || continue
    set -- $f
    sum=$((sum + ${12} + ${13}))   # fields 14 (utime) and 15 (stime) of stat
  done
  echo $sum
}
status_kb() {  # sum of a /proc/PID/status field (VmHWM, VmRSS) over the tree
  local sum=0 p v
  for p in $(tree_pids "$SERVER_PID"); do
    v=$(awk -v k="$1:" '$1==k {print $2}' /proc/$p/status 2>/dev/null) || true
    sum=$((sum + ${v:-0}))
  done
  echo $sum
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pids; pids=$(tree_pids "$SERVER_PID")
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
      local alive=; for p in $pids; do [ -d /proc/$p ] && alive=1; done
      [ -z "$alive" ] && break; sleep 0.1
    done
    for p in $pids; do [ -d /proc/$p ] && kill -KILL "$p" 2>/dev/null || true; done
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# ---- start ----
echo "== $LABEL ($TAG): starting on CPU $SERVER_CPU: $SERVER_CMD"
taskset -c "$SERVER_CPU" bash -c "exec $SERVER_CMD" >"$RUNDIR/server.log" 2>&1 &
SERVER_PID=$!
ready=
for _ in $(seq $((STARTUP_TIMEOUT * 10))); do
  [ -d /proc/$SERVER_PID ] || break
  if [ -n "$(ss -Htln "sport = :$PORT")" ]; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "run.sh: server did not listen on $PORT within ${STARTUP_TIMEOUT}s; log:" >&2
  tail -20 "$RUNDIR/server.log" >&2; exit 1
fi
sleep 0.2
RSS_START=$(status_kb VmRSS)

# ---- correctness (once) ----
read -r code ver < <(curl -sS --http2 --cacert "$CERTS/ca.crt" --max-time 10 \
  -H 'Content-Type: application/json' --data-binary @"$REVIEW" \
  -o "$RUNDIR/verify.json" -w '%{http_code} %{http_version}\n' "$URL") || true
if [ "${code:-}" != 200 ] || [ "${ver:-}" != 2 ] ||
   ! jq -e --arg uid "$UID_WANT" '.apiVersion=="admission.k8s.io/v1" and .kind=="AdmissionReview"
          and .response.uid==$uid and .response.allowed==true' "$RUNDIR/verify.json" >/dev/null 2>&1; then
  echo "run.sh: VERIFY FAILED (http ${code:-?}, HTTP/${ver:-?}); response:" >&2
  head -c 2000 "$RUNDIR/verify.json" >&2 2>/dev/null; echo >&2; exit 1
fi
# JSON Patch: base64 string per the API ([]byte in Go); some servers send a
# JSON array of byte values instead (Go's decoder accepts that too) -- say so.
patch_enc=$(jq -r '.response.patch | type' "$RUNDIR/verify.json")
patch=$(jq -r '.response.patch // empty | if type=="array" then implode else @base64d end' "$RUNDIR/verify.json" 2>/dev/null || true)
echo "verify: OK (HTTP/2 200, uid $UID_WANT, allowed=true, patchType=$(jq -r '.response.patchType // "none"' "$RUNDIR/verify.json"))"
echo "verify: patch (${patch_enc/string/base64}) ${patch:-<none>}"
echo "$patch" > "$RUNDIR/verify.patch.json"

# ---- load ----
h2load_run() {  # proto clients streams n logfile  -> stdout of h2load
  local proto=$1 c=$2 m=$3 n=$4 log=$5 extra=()
  [ "$proto" = h1 ] && extra+=(--h1)
  [ "${RPS:-0}" != 0 ] && extra+=(--rps "$RPS")
  timeout --signal=INT --kill-after=5 "$RUN_TIMEOUT" taskset -c "$CLIENT_CPU" \
    h2load "${extra[@]}" -t 1 -c "$c" -m "$m" -n "$n" \
      -d "$REVIEW" -H 'Content-Type: application/json' \
      ${log:+--log-file="$log"} "$URL"
}
if [ "$WARMUP" -gt 0 ]; then
  h2load_run h2 10 10 "$WARMUP" "" > "$RUNDIR/warmup.txt" 2>&1 || true
fi

ROWS=()
for sc in $SCENARIOS; do
  IFS=: read -r proto c m <<<"$sc"
  name="$proto-${c}x$m"
  raw=$RUNDIR/$name.txt; log=$RUNDIR/$name.log
  load1=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(cpu_ticks)
  TIMEFORMAT='%U %S %R'
  { time h2load_run "$proto" "$c" "$m" "$N" "$log" > "$raw" 2>&1 ; } 2> "$RUNDIR/$name.time" || true
  t1=$(cpu_ticks)
  read -r cu cs creal < "$RUNDIR/$name.time"
  hwm=$(status_kb VmHWM)
  alpn=$(awk -F': ' '/Application protocol/ {print $2}' "$raw")
  read -r secs rps < <(awk '/^finished in/ { t=$3; sub(/,$/,"",t); f=1
      if (t ~ /ms$/) {f=1e-3} else if (t ~ /us$/) {f=1e-6}
      sub(/[mu]?s$/,"",t); printf "%.3f %s\n", t*f, $4 }' "$raw") || true
  read -r ndone ok failed < <(awk '/^requests:/ {print $6, $8, $10}' "$raw") || true
  ok2=$(awk '/^status codes:/ {print $3}' "$raw")
  read -r mean p50 p99 max < <(sort -n -k3,3 "$log" 2>/dev/null | awk '
      {v[NR]=$3; s+=$3}
      END { if (NR==0) {print "NA NA NA NA"; exit}
            i50=int(NR*0.50); if (i50<1) i50=1; i99=int(NR*0.99); if (i99<1) i99=1
            printf "%.0f %d %d %d\n", s/NR, v[i50], v[i99], v[NR] }')
  ndone=${ndone:-0}
  [ "${KEEP_LOGS:-0}" = 1 ] || rm -f "$log"
  if [ "$ndone" -gt 0 ]; then
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$ndone" 'BEGIN{printf "%.1f", d*1e6/hz/n}')
    srv_pct=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$creal" 'BEGIN{printf "%.0f", 100*d/hz/s}')
  else cpu_us=NA; srv_pct=NA; fi
  cli_pct=$(awk -v u="$cu" -v s="$cs" -v r="$creal" 'BEGIN{printf "%.0f", 100*(u+s)/r}')
  row="$STAMP	$LABEL	$TAG	$name	${alpn:-NA}	$c	$m	$ndone	${ok2:-0}	$((ndone - ${ok:-0}))	${secs:-NA}	${rps:-NA}	$mean	$p50	$p99	$max	$cpu_us	$srv_pct	$cli_pct	$RSS_START	$hwm	$load1"
  echo "$row" >> "$TSV"; ROWS+=("$row")
  printf '%-10s %-8s rps=%-9s mean=%sus p99=%sus srv_cpu=%sus/req (%s%% of a core) client=%s%% rss_peak=%sKiB ok=%s/%s\n' \
    "$name" "${alpn:-NA}" "${rps:-NA}" "$mean" "$p99" "$cpu_us" "$srv_pct" "$cli_pct" "$hwm" "${ok2:-0}" "$ndone"
  if [ "$ndone" -ne "$N" ] || [ "${ok2:-0}" -ne "$N" ]; then
    echo "WARNING: $name: $ndone done, ${ok2:-0} 2xx of $N (timeout ${RUN_TIMEOUT}s or errors; see $raw)" >&2
  fi
  sleep 1
done

stop_server
echo
echo "== summary: $LABEL ($TAG), N=$N per scenario, server on CPU $SERVER_CPU, h2load on CPU $CLIENT_CPU"
{ echo "scenario	alpn	req/s	mean_us	p50_us	p99_us	max_us	cpu_us/req	srv_cpu%	cli_cpu%	rss_start_KiB	rss_peak_KiB	load1"
  for r in "${ROWS[@]}"; do
    IFS=$'\t' read -r -a f <<<"$r"
    echo "${f[3]}	${f[4]}	${f[11]}	${f[12]}	${f[13]}	${f[14]}	${f[15]}	${f[16]}	${f[17]}	${f[18]}	${f[19]}	${f[20]}	${f[21]}"
  done; } | column -t -s $'\t'
echo "rows appended to $TSV; raw h2load output in $RUNDIR"
