#!/usr/bin/env bash
# Tear down what ns-up.sh made, whatever state it is in: domains, networks and pools of the private libvirtd, the
# daemons, every process left in the netns (QEMU, dnsmasq, vagrant, vmbackup: all ours), the holder, the netns and
# the private state directory (storage pool volumes live there). Only PIDs we recorded or that live in our netns are
# signalled. Idempotent; exits non-zero only if something is still left afterwards.
set -uo pipefail

E2E_STATE=${E2E_STATE:-/var/tmp/vmbackup-e2e/run}
NS=${E2E_NETNS:-vmbackup-e2e}
log() { printf '[ns-down %s] %s\n' "$(date +%T)" "$*"; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
NSINO=$(stat -L -c %i "/run/netns/$NS" 2>/dev/null || true)
# a recorded pid is only signalled while it still lives in our netns (never a reused pid of someone else)
ours() { [ -n "$NSINO" ] && [ -n "$1" ] && [ "$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" = "$NSINO" ]; }
wait_gone() { for _ in $(seq 50); do alive "$1" || return 0; sleep 0.1; done; return 1; }
stop_pid() { ours "$1" || return 0; kill "$1" 2>/dev/null; wait_gone "$1" || kill -9 "$1" 2>/dev/null; wait_gone "$1"; }

HOLDER=$(cat "$E2E_STATE/holder.pid" 2>/dev/null || true)
if ours "$HOLDER"; then
  N=(nsenter -t "$HOLDER" -m -n)
  V=("${N[@]}" timeout 30 virsh -q -c "$(cat "$E2E_STATE/uri" 2>/dev/null || echo qemu:///system)")
  if "${V[@]}" uri >/dev/null 2>&1; then
    for d in $("${V[@]}" list --all --name); do
      "${V[@]}" destroy "$d" >/dev/null 2>&1
      "${V[@]}" undefine "$d" --nvram --remove-all-storage >/dev/null 2>&1 || "${V[@]}" undefine "$d" >/dev/null 2>&1
      log "removed domain $d"
    done
    for n in $("${V[@]}" net-list --all --name); do
      "${V[@]}" net-destroy "$n" >/dev/null 2>&1; "${V[@]}" net-undefine "$n" >/dev/null 2>&1
      log "removed network $n"
    done
    for p in $("${V[@]}" pool-list --all --name); do
      for v in $("${V[@]}" vol-list "$p" 2>/dev/null | awk 'NR>0 {print $1}'); do
        "${V[@]}" vol-delete "$v" --pool "$p" >/dev/null 2>&1 && log "removed volume $p/$v"
      done
      "${V[@]}" pool-destroy "$p" >/dev/null 2>&1; "${V[@]}" pool-undefine "$p" >/dev/null 2>&1
      log "removed pool $p"
    done
  fi
fi
VLOGD=""; LIBVIRTD=""
[ -f "$E2E_STATE/daemons.pid" ] && read -r VLOGD LIBVIRTD < "$E2E_STATE/daemons.pid"
ours "${LIBVIRTD:-}" && stop_pid "$LIBVIRTD" && log "stopped libvirtd $LIBVIRTD"
ours "${VLOGD:-}" && stop_pid "$VLOGD" && log "stopped virtlogd $VLOGD"
# anything else still in our netns (QEMU, dnsmasq, a killed driver's children) can only be ours
if ip netns list | grep -qw "$NS"; then
  for p in $(ip netns pids "$NS" 2>/dev/null); do
    [ "$p" = "$HOLDER" ] && continue
    log "stopping leftover $(cat /proc/"$p"/comm 2>/dev/null) ($p)"
    stop_pid "$p"
  done
fi
ours "$HOLDER" && stop_pid "$HOLDER" && log "stopped holder $HOLDER"
if ip netns list | grep -qw "$NS"; then
  ip netns del "$NS" && log "removed netns $NS"
fi
rm -rf "$E2E_STATE/lv" "$E2E_STATE/uri" "$E2E_STATE/holder.pid" "$E2E_STATE/daemons.pid"

left=0
ip netns list | grep -qw "$NS" && { echo "ns-down: netns $NS is still there" >&2; left=1; }
ours "$HOLDER" && { echo "ns-down: holder $HOLDER still running" >&2; left=1; }
[ -e "$E2E_STATE/lv" ] && { echo "ns-down: $E2E_STATE/lv still there" >&2; left=1; }
[ $left = 0 ] && log "clean: no netns, daemon, domain or volume left"
exit $left
