# shellcheck shell=bash
# Process helpers for the e2e scripts (sourced). A process is known by a pid file written when
# it was started; before signalling it, its command line is checked, so a recycled pid is never
# killed.

# proc_alive PIDFILE NAME: the recorded process runs and its command line contains NAME.
proc_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# proc_stop PIDFILE NAME [TIMEOUT_S]: SIGTERM, wait up to TIMEOUT_S (10), then SIGKILL.
# Removes the pid file. No-op when the process is not running.
proc_stop() {
  local pidfile=$1 name=$2 timeout=${3:-10} pid
  if proc_alive "$pidfile" "$name"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((timeout * 10))); do
      proc_alive "$pidfile" "$name" || break
      sleep 0.1
    done
    if proc_alive "$pidfile" "$name"; then
      echo "$name (pid $pid) still running ${timeout}s after SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidfile"
}
