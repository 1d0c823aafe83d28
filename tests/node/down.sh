#!/usr/bin/env bash
# Stops everything up.sh and registry-up.sh started in $DIR, by the pids they recorded (each
# command line checked first, tests/e2e/lib-proc.sh), and undoes their host changes:
#   1. the controller-manager and scheduler stop first (nothing recreates Pods), then every Pod
#      is deleted through the API so the kubelet stops its containers, runs CNI DEL (veth, IP,
#      masquerade chain) and unmounts its volumes;
#   2. the kubelet stops; containerd's remaining tasks are killed, containerd stops, then the
#      shims of OUR containerd (their pid files, command line naming our socket) and their
#      sockets in /run/containerd/s/ (a path containerd 1.6 hard-codes);
#   3. mounts under $DIR and the network namespaces of our sandboxes, the bridge, iptables (the
#      PSI-NODE-API chain, the CNI bridge plugin's rules tagged with our network name), kubepods
#      cgroups, /var/log/pods + /var/log/containers entries of our Pods, our CNI result cache
#      entries, host directories that did not exist before up.sh, and the sysctls (host values
#      from $DIR/sysctl.saved);
#   4. the registry, kube-apiserver and etcd stop (and a Prometheus s7 left); *.log files are
#      copied to $DIR.logs/ and $DIR is removed.
#
# Usage: tests/node/down.sh      (root) re-runnable; does nothing when $DIR does not exist
# Env:   DIR, BRIDGE, CACHE (tests/node/lib.sh)
set -uo pipefail
# shellcheck source=tests/node/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root down.sh
[ -d "$DIR" ] || { echo "down.sh: $DIR does not exist; nothing to do"; exit 0; }
if [ ! -e "$DIR/.psi-node" ]; then
  echo "down.sh: $DIR has no .psi-node marker (not made by tests/node); not touching it" >&2
  exit 1
fi
cd "$DIR" || exit 1
C=$DIR/containerd

# --- 1. Pods, through the API while the kubelet still runs
proc_stop controller-manager.pid "$CACHE/kube-controller-manager"
proc_stop scheduler.pid "$CACHE/kube-scheduler"
pod_uids=""
if proc_alive kubelet.pid "$CACHE/kubelet" && kc --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  pod_uids=$(kc get pods -A -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' 2>/dev/null)
  # Forced: the API objects go at once and the kubelet kills what it runs (a graceful delete
  # of a Pod stuck in ImagePullBackOff never completed with kubelet 1.20 here).
  kc delete pods --all --all-namespaces --grace-period=0 --force >/dev/null 2>&1
  # Every sandbox stopped (the kubelet ran CNI DEL first) = no containerd task left.
  no_tasks() { [ -z "$(ctrd tasks ls -q 2>/dev/null)" ]; }
  if wait_until 30 "the kubelet to stop every container and sandbox" - no_tasks; then
    log "Pods deleted, their containers and sandboxes stopped by the kubelet"
  else
    echo "down.sh: containers left; cleaning up by hand" >&2
  fi
fi
[ -d "$DIR/kubelet/pods" ] && pod_uids="$pod_uids $(ls "$DIR/kubelet/pods")"
proc_stop kubelet.pid "$CACHE/kubelet"

# --- 2. containerd and its shims
netns=""
if proc_alive "$C/containerd.pid" "$C/config.toml"; then
  for id in $(ctrd containers ls -q 2>/dev/null); do
    # Network namespace paths of the sandboxes (only sandboxes have one of their own).
    netns="$netns $(ctrd containers info "$id" 2>/dev/null |
      grep -o '"path": *"/var/run/netns/cni-[^"]*"\|"path": *"/run/netns/cni-[^"]*"' | sed 's/.*"\(\/[^"]*\)"/\1/')"
  done
  for t in $(ctrd tasks ls -q 2>/dev/null); do ctrd tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 0.3
  for t in $(ctrd tasks ls -q 2>/dev/null); do ctrd tasks rm -f "$t" >/dev/null 2>&1; done
fi
proc_stop "$C/containerd.pid" "$C/config.toml"
for pid in $(our_shims); do
  echo "$pid" >"$C/shim.pid"
  proc_stop "$C/shim.pid" "$CTR_SOCK" 3
done
# containerd 1.6: socket = /run/containerd/s/sha256(<containerd address>/<namespace>/<id>)
for d in "$C"/state/io.containerd.runtime.v2.task/*/*; do
  [ -d "$d" ] || continue
  ns=$(basename "$(dirname "$d")")
  sock=/run/containerd/s/$(printf '%s' "$CTR_SOCK/$ns/$(basename "$d")" | sha256sum | cut -d' ' -f1)
  rm -f "$sock"
done
log "containerd and its shims stopped"

# --- 3. host state
grep -E " $DIR(/| )" /proc/self/mountinfo | awk '{ print $5 }' | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
for n in $netns; do
  if mountpoint -q "$n" 2>/dev/null; then umount "$n" 2>/dev/null || umount -l "$n"; fi
  rm -f "$n"
done
ip link del "$BRIDGE" 2>/dev/null
ipt() { iptables -w 5 "$@" 2>/dev/null; }
ipt -t nat -D PREROUTING -j PSI-NODE-API
ipt -t nat -F PSI-NODE-API && ipt -t nat -X PSI-NODE-API
# The bridge plugin's masquerade rules carry the comment 'name: "psi-node" id: "<container>"'.
for table in nat filter; do
  ipt -t "$table" -S | grep -F "name: \\\"$CNI_NET\\\"" | while read -r rule; do
    chain=$(sed -n 's/.* -j \(CNI-[^ ]*\).*/\1/p' <<<"$rule")
    eval "ipt -t $table ${rule/#-A/-D}"
    [ -n "$chain" ] && { ipt -t "$table" -F "$chain"; ipt -t "$table" -X "$chain"; }
  done
done
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
done
for uid in $pod_uids; do
  for d in /var/log/pods/*_"$uid"; do
    [ -d "$d" ] || continue
    for l in /var/log/containers/*.log; do
      [ -L "$l" ] && case $(readlink "$l") in "$d"/*) rm -f "$l" ;; esac
    done
    rm -rf "$d"
  done
done
# libcni's result cache (/var/lib/cni/results, hard-coded): "<network>-<sandbox id>-<ifname>"
# for our network and containerd's loopback. CNI DEL removes them; this catches a kubelet that
# could not tear its Pods down.
rm -f /var/lib/cni/results/"$CNI_NET"-*
for d in "$C"/state/io.containerd.runtime.v2.task/*/* "$C"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
  [ -e "$d" ] && rm -f "/var/lib/cni/results/cni-loopback-$(basename "$d")-lo"
done
if [ -s host-dirs.created ]; then
  sort -r host-dirs.created | while read -r d; do rmdir "$d" 2>/dev/null; done
fi
if [ -s sysctl.saved ]; then
  while read -r s v; do [ -w "/proc/sys/$s" ] && echo "$v" >"/proc/sys/$s"; done <sysctl.saved
fi
log "host restored (mounts, netns, bridge, iptables, cgroups, logs, sysctls)"

# --- 4. registry, API server, etcd (and s7's Prometheus, should its test process have died
# before stopping it: tests/node/story/prometheus.rs)
proc_stop "$DIR/story/minted/prometheus/prometheus.pid" "$DIR/story/minted/prometheus/prometheus.json" 2
proc_stop "$DIR/registry/registry.pid" "$DIR/registry/config.yml"
# kube-apiserver 1.20 takes about 30 s to exit on SIGTERM here; its state is thrown away with
# etcd's, so it gets 2 s (the SIGKILL notice goes to its log).
proc_stop apiserver.pid "$CACHE/kube-apiserver" 2 2>>apiserver.log
proc_stop etcd.pid "$DIR/etcd-data"
cd / || exit 1
rm -rf "$DIR.logs" && mkdir -p "$DIR.logs"
(cd "$DIR" && find . -maxdepth 3 -name '*.log' -not -path './kubelet/*' -exec cp --parents {} "$DIR.logs/" \;)
rm -rf "$DIR"
log "stopped; logs kept in $DIR.logs, $DIR removed"
