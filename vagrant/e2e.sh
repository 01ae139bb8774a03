#!/usr/bin/env bash
# The Vagrant end-to-end test (`make e2e`): two VMs made by Vagrant, protected, backed up, restored and checked with
# the vmbackup CLI only. Progress goes to stdout ("== step" lines with timings); the outcome, every step's time and
# every check go to $E2E_STATE/result.json (tests/e2e reads it). Exit 0 only when every check passed.
#
#   image -> box -> netns + private libvirtd -> vagrant up (2 VMs, provisioned) -> discover -> register (both) ->
#   policy + protect -> marker row -> backup -> points -> vault verify -> restore app as new VM -> DB checks in it ->
#   boot-check marker point (marker data checked over SSH) -> vagrant destroy -> teardown (always, by trap)
#
# vagrant, libvirtd, the management network (192.168.121.0/24) and vmbackup itself run inside a network namespace +
# private mount namespace (vagrant/ns-up.sh), reaching libvirt through a non-default socket URI given with --host.
# Needs root. Environment: E2E_ROOT (/var/tmp/vmbackup-e2e), VMBACKUP_IMAGE_CACHE (/var/tmp/vmbackup-images),
# E2E_IMAGE_HOME (the VMBACKUP_HOME whose lab key the image is built for; default $VMBACKUP_IMAGE_CACHE/test-home,
# the test suite's shared key), E2E_KEEP=1 keeps the vault after success. Run under flock /tmp/vmbackup-vm.lock.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=${E2E_PYTHON:-$ROOT/.venv/bin/python}
VMBACKUP_BIN=$(dirname "$PY")/vmbackup
E2E_ROOT=${E2E_ROOT:-/var/tmp/vmbackup-e2e}
BOX_ONLY=0
if [ "${1:-}" = "--box-only" ]; then BOX_ONLY=1; E2E_STATE=$E2E_ROOT/box-only; fi   # never touches a running e2e
export E2E_STATE=${E2E_STATE:-$E2E_ROOT/run}
export E2E_NETNS=${E2E_NETNS:-vmbackup-e2e}
export VMBACKUP_IMAGE_CACHE=${VMBACKUP_IMAGE_CACHE:-/var/tmp/vmbackup-images}
# the home whose lab key the image (and so the box) is built for: the test suite's shared one by default, so
# `make test` and `make e2e` share one cached image
IMAGE_HOME=${E2E_IMAGE_HOME:-$VMBACKUP_IMAGE_CACHE/test-home}
RUN_HOME=$E2E_STATE/home            # vmbackup's own VMBACKUP_HOME for this run (state.db, pki, vault)
BOX=vmbackup/lab-debian12
VMS=(e2e-app e2e-marker)
STEPS=$E2E_STATE/steps.jsonl
CHECKS=$E2E_STATE/checks.jsonl
T_START=$(date +%s.%N)
CUR=""; CUR_T0=""; HOLDER=""; URI=""; DESTROYED=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
exec 3>&1   # the log always reaches the terminal, even from inside $(...) and redirected commands
log() { printf '[e2e %s +%ss] %s\n' "$(date +%T)" "$(since "$T_START")" "$*" >&3; }
jstr() { "$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# --- steps and checks: recorded as JSON lines, assembled into result.json at the end ---------------------------------
begin() { CUR=$1; CUR_T0=$(now); log "== $1"; }
end_step() {
  printf '{"step": %s, "ok": true, "seconds": %s}\n' "$(jstr "$CUR")" "$(since "$CUR_T0")" >> "$STEPS"
  log "   $CUR done in $(since "$CUR_T0") s"; CUR=""
}
check() {  # check NAME OK(0|1) DETAIL: record it; a failed check ends the run
  local ok=false; [ "$2" = 1 ] && ok=true
  printf '{"check": %s, "ok": %s, "detail": %s}\n' "$(jstr "$1")" "$ok" "$(jstr "$3")" >> "$CHECKS"
  if [ "$ok" = true ]; then log "   ok   $1: $3"; else log "   FAIL $1: $3"; exit 1; fi
}

# --- running things inside the namespaces ---------------------------------------------------------------------------
IN() { nsenter -t "$HOLDER" -m -n "$@"; }
vmb() {  # the product CLI, inside the namespaces, with this run's home
  log "   \$ vmbackup $*"
  IN env -u VMBACKUP_URI VMBACKUP_HOME="$RUN_HOME" VMBACKUP_VAULT="$RUN_HOME/vault" COLUMNS=160 \
    "$VMBACKUP_BIN" "$@"
}
vag() {  # vagrant inside the namespaces (bounded: a hung vagrant must not hang CI)
  timeout "${VAG_TIMEOUT:-1200}" nsenter -t "$HOLDER" -m -n env VAGRANT_HOME="$E2E_ROOT/vagrant.d" VAGRANT_DOTFILE_PATH="$E2E_STATE/vagrant-dot" VAGRANT_CWD="$HERE" \
    VAGRANT_DEFAULT_PROVIDER=libvirt VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1 \
    E2E_BOX="$BOX" E2E_SSH_KEY="$KEY" E2E_LIBVIRT_SOCKET="$SOCKET" vagrant "$@"
}
virsh_in() { IN virsh -q -c "$URI" "$@"; }
gssh() {  # gssh IP CMD: root SSH into a guest on the management network (inside the netns)
  local ip=$1; shift
  IN ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o BatchMode=yes -o ConnectTimeout=10 "root@$ip" "$@"
}
lease_ip() {  # lease_ip DOMAIN [TIMEOUT]: the domain's DHCP-leased IPv4 on the management network
  local ip="" i
  for ((i = 0; i < ${2:-5}; i++)); do
    ip=$(virsh_in domifaddr "$1" --source lease 2>/dev/null | awk '$3 == "ipv4" {sub("/.*", "", $4); print $4; exit}')
    [ -n "$ip" ] && break
    sleep 1
  done
  [ -n "$ip" ] || { log "no DHCP lease for $1"; return 1; }
  echo "$ip"
}
indent() { while IFS= read -r line; do printf '    %s %s\n' "$(date +%T)" "$line"; done; }  # timestamped sub-log
jq_py() { "$PY" -c "import json,sys; d=json.load(sys.stdin); $1"; }  # jq_py 'PYTHON using d' < JSON

# --- cleanup: always, whatever failed ---------------------------------------------------------------------------------
finish() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$CUR" ]; then
    printf '{"step": %s, "ok": false, "seconds": %s}\n' "$(jstr "$CUR")" "$(since "$CUR_T0")" >> "$STEPS"
    log "!! step $CUR failed (exit $rc)"
  fi
  local t0; t0=$(now)
  if [ -n "$HOLDER" ] && [ -d "$E2E_STATE/vagrant-dot" ] && [ "$DESTROYED" = 0 ]; then
    log "== teardown: vagrant destroy"
    VAG_TIMEOUT=120 vag destroy -f 2>&1 | sed -u 's/^/    /'
  fi
  local down=0
  if [ "$BOX_ONLY" = 0 ]; then
    log "== teardown: namespace, daemons, leftovers"
    bash "$HERE/ns-down.sh" 2>&1 | sed -u 's/^/    /'
    down=${PIPESTATUS[0]}
  fi
  printf '{"step": "teardown", "ok": %s, "seconds": %s}\n' "$([ "$down" = 0 ] && echo true || echo false)" \
    "$(since "$t0")" >> "$STEPS"
  [ "$down" = 0 ] || rc=${rc/#0/3}
  rm -rf "$RUN_HOME/restored" "$RUN_HOME/bootcheck"   # VM disks never outlive the run
  if [ "$rc" = 0 ] && [ "${E2E_KEEP:-0}" != 1 ]; then rm -rf "$RUN_HOME"; fi   # on failure: state.db + vault stay
  "$PY" - "$E2E_STATE" "$rc" "$(since "$T_START")" <<'PY'
import json, sys
from pathlib import Path
state, rc, total = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def lines(name):
    p = state / name
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
facts = json.loads((state / "facts.json").read_text()) if (state / "facts.json").exists() else {}
result = {"ok": rc == 0, "exit_code": rc, "total_seconds": total, "steps": lines("steps.jsonl"),
          "checks": lines("checks.jsonl"), "facts": facts}
(state / "result.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"[e2e] result: {'PASSED' if rc == 0 else 'FAILED'} in {total:.0f} s; {state / 'result.json'}")
PY
  exit "$rc"
}
fact() { "$PY" - "$E2E_STATE/facts.json" "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
p = Path(sys.argv[1]); d = json.loads(p.read_text()) if p.exists() else {}
d[sys.argv[2]] = sys.argv[3]; p.write_text(json.dumps(d, indent=2))
PY
}

# ======================================================================================================================
[ "$(id -u)" = 0 ] || { echo "e2e: must run as root (network and mount namespaces, libvirtd)" >&2; exit 1; }
for tool in vagrant nsenter ip virsh ssh; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool missing (apt-get install -y --no-install-recommends vagrant vagrant-libvirt dnsmasq-base iptables)" >&2; exit 1; }
done
mkdir -p "$E2E_ROOT"
if [ -e "$E2E_STATE/holder.pid" ] || ip netns list | grep -qw "$E2E_NETNS"; then
  log "leftovers of an earlier run: tearing them down first"
  bash "$HERE/ns-down.sh"
fi
rm -rf "$E2E_STATE"
mkdir -p "$E2E_STATE" "$RUN_HOME"
chmod 755 "$E2E_ROOT" "$E2E_STATE" "$RUN_HOME"    # QEMU (libvirt-qemu) opens restored disks below RUN_HOME
KEY=""; SOCKET=""
trap finish EXIT
trap 'exit 130' INT TERM

begin "lab image"
IMAGE=$(VMBACKUP_HOME=$IMAGE_HOME "$PY" -c '
from controller import settings
from controller.lab import image
print(image.ensure_image(settings.load(), progress=lambda s: print("    image:", s, flush=True)).path)' | tail -1)
KEY=$IMAGE_HOME/lab/ssh/id_ed25519
[ -f "$IMAGE" ] && [ -f "$KEY" ]
fact image "$IMAGE"; log "   image $IMAGE, key $KEY"
end_step

begin "box"
BOXFILE=$E2E_ROOT/boxes/$(basename "$IMAGE" .qcow2).box
mkdir -p "$E2E_ROOT/boxes"
[ -f "$BOXFILE" ] || bash "$HERE/build-box.sh" "$IMAGE" "$BOXFILE"
STAMP=$E2E_ROOT/vagrant.d/vmbackup-box.stamp
if [ "$(cat "$STAMP" 2>/dev/null)" != "$BOXFILE" ]; then
  VAGRANT_HOME=$E2E_ROOT/vagrant.d VAGRANT_CHECKPOINT_DISABLE=1 vagrant box add --force --name "$BOX" "$BOXFILE" \
    2>&1 | sed -u 's/^/    /'
  echo "$BOXFILE" > "$STAMP"
fi
fact box "$BOXFILE"
end_step
if [ "$BOX_ONLY" = 1 ]; then log "box $BOXFILE (added to $E2E_ROOT/vagrant.d as $BOX)"; exit 0; fi

begin "agent bundle (host side: the namespace has no route to PyPI)"
mkdir -p "$E2E_ROOT/bundles"; ln -sfn "$E2E_ROOT/bundles" "$RUN_HOME/bundles"
"$PY" -c 'import sys; from pathlib import Path; from controller.registration.bundle import build_bundle
b = build_bundle(Path(sys.argv[1])); print("    bundle", b.tar_path, b.manifest.get("agent_version"))' "$RUN_HOME/bundles"
end_step

begin "namespace + private libvirtd"
bash "$HERE/ns-up.sh" 2>&1 | sed -u 's/^/    /'
[ "${PIPESTATUS[0]}" = 0 ]
HOLDER=$(cat "$E2E_STATE/holder.pid"); URI=$(cat "$E2E_STATE/uri"); SOCKET=${URI#*socket=}
fact libvirt_uri "$URI"
end_step

begin "vagrant up (2 VMs, provisioned)"
vag up --no-tty --provider libvirt 2>&1 | indent
[ "${PIPESTATUS[0]}" = 0 ]
declare -A IP
for vm in "${VMS[@]}"; do IP[$vm]=$(lease_ip "$vm" 30); fact "ip_$vm" "${IP[$vm]}"; done
log "   guests: e2e-app ${IP[e2e-app]}, e2e-marker ${IP[e2e-marker]}"
end_step

begin "guest state before backup"
rows=$(gssh "${IP[e2e-app]}" "sqlite3 /data1/labapp/app.db 'SELECT count(*) FROM events'")
check "labapp writing" "$([ "$rows" -gt 0 ] && echo 1 || echo 0)" "$rows rows in app.db"
MARKER=$(gssh "${IP[e2e-marker]}" 'cat /srv/marker/marker.txt')
fact marker "$MARKER"
end_step

begin "discover"
vmb discover --host "$URI" --json > "$E2E_STATE/discover.json"
found=$(jq_py 'print(" ".join(sorted(v["name"] for h in d["hosts"] for v in h["vms"])))' < "$E2E_STATE/discover.json")
check "discover finds both" "$([ "$found" = "e2e-app e2e-marker" ] && echo 1 || echo 0)" "found: $found"
end_step

begin "register both"
# One bulk call, no per-VM address: vmbackup finds each VM's address in the DHCP leases of the private libvirtd.
rc=0
vmb register "${VMS[@]}" --host "$URI" --ssh-user root --ssh-key "$KEY" --ssh-wait 60 --json \
  > "$E2E_STATE/register.json" 2> "$E2E_STATE/register.err" || rc=$?
[ "$rc" = 0 ] || sed -u 's/^/    /' "$E2E_STATE/register.err" "$E2E_STATE/register.json"
for vm in "${VMS[@]}"; do
  got=$(VM=$vm jq_py 'import os; r=[r for r in d if r["vm"]==os.environ["VM"]][0]
print(r["ok"], r.get("registration", {}).get("agent_host"), r.get("agent_version"), r.get("timings"))' \
    < "$E2E_STATE/register.json" 2>/dev/null || echo "False")
  check "register $vm" "$(case "$got" in "True ${IP[$vm]} "*) echo 1 ;; *) echo 0 ;; esac)" \
    "exit $rc; agent at its leased address ${IP[$vm]}? $got"
done
hook=$(gssh "${IP[e2e-app]}" 'ls /etc/vmbackup-agent/hooks.d/')
check "freeze hook kept by the agent install" "$([ "$hook" = 50-labapp ] && echo 1 || echo 0)" "hooks.d: $hook"
end_step

begin "policy + protect"
vmb policy create e2e --daily 03:00 --consistency FILE_SYSTEM
vmb protect e2e-app e2e-marker --policy e2e
vmb protect --list
end_step

begin "marker row in the application DB"
TOKEN=e2e-$(date +%s)-$RANDOM
gssh "${IP[e2e-app]}" "sqlite3 /data1/labapp/app.db \"INSERT INTO events (ts, kind, note) VALUES (datetime('now'), 'e2e-before-backup', '$TOKEN')\""
fact db_token "$TOKEN"
end_step

begin "backup now"
vmb backup e2e-app e2e-marker --host "$URI" --json > "$E2E_STATE/backup.json"
head -n 60 "$E2E_STATE/backup.json" | sed -u 's/^/    /'   # head reads the file itself: no SIGPIPE under pipefail
for vm in "${VMS[@]}"; do
  want=FILE_SYSTEM; [ "$vm" = e2e-app ] && want=APPLICATION
  got=$(jq_py "print(next(r.get('consistency') for r in d if r.get('vm_name') == '$vm'))" < "$E2E_STATE/backup.json")
  check "$vm consistency" "$([ "$got" = "$want" ] && echo 1 || echo 0)" "recorded $got, expected $want"
done
APP_POINT=$(jq_py "print(next(r['point_id'] for r in d if r.get('vm_name') == 'e2e-app'))" < "$E2E_STATE/backup.json")
MARKER_POINT=$(jq_py "print(next(r['point_id'] for r in d if r.get('vm_name') == 'e2e-marker'))" < "$E2E_STATE/backup.json")
fact app_point "$APP_POINT"; fact marker_point "$MARKER_POINT"
end_step

begin "points + vault verify"
vmb points
vmb points --json > "$E2E_STATE/points.json"
n=$(jq_py 'print(len(d))' < "$E2E_STATE/points.json")
check "two recovery points" "$([ "$n" = 2 ] && echo 1 || echo 0)" "$n point(s) in the vault"
cons=$(jq_py 'print(" ".join(sorted(p["vm"]["name"] + "=" + p["consistency"] for p in d)))' \
  < "$E2E_STATE/points.json" || echo "?")
check "points record consistency" "$([ "$cons" = "e2e-app=APPLICATION e2e-marker=FILE_SYSTEM" ] && echo 1 || echo 0)" "$cons"
rc=0; vmb vault verify --json > "$E2E_STATE/verify.json" || rc=$?
check "vault verify" "$([ "$rc" = 0 ] && echo 1 || echo 0)" "exit $rc: $(jq_py 'print(d["ok"], len(d["points"]), "points")' < "$E2E_STATE/verify.json")"
end_step

begin "restore e2e-app as a new VM"
vmb restore "$APP_POINT" --as e2e-app-restored --host "$URI" --start
RIP=$(lease_ip e2e-app-restored 120); fact ip_restored "$RIP"
for _ in $(seq 60); do gssh "$RIP" true 2>/dev/null && break; sleep 3; done
end_step

begin "check the restored guest"
integrity=$(gssh "$RIP" "systemctl stop labapp; sqlite3 /data1/labapp/app.db 'PRAGMA integrity_check'")
check "restored DB integrity_check" "$([ "$integrity" = ok ] && echo 1 || echo 0)" "$integrity"
found=$(gssh "$RIP" "sqlite3 /data1/labapp/app.db \"SELECT count(*) FROM events WHERE kind = 'e2e-before-backup' AND note = '$TOKEN'\"")
check "restored DB has the pre-backup row" "$([ "$found" = 1 ] && echo 1 || echo 0)" "$found row(s) with $TOKEN"
src=$(gssh "$RIP" 'findmnt -n -o SOURCE /data1 || true')
check "restored guest mounts its data disk" "$([ "$src" = /dev/vdb ] && echo 1 || echo 0)" "/data1 on ${src:-nothing}"
virsh_in destroy e2e-app-restored >/dev/null || true
end_step

begin "boot-check the marker point (marker data checked over SSH)"
cmd="cd /srv/marker && sha256sum -c --quiet SHA256SUMS && [ \"\$(sha256sum < marker.txt | cut -c1-64)\" = $(
  printf '%s\n' "$MARKER" | sha256sum | cut -c1-64) ]"
rc=0; vmb boot-check "$MARKER_POINT" --host "$URI" --check-command "$cmd" --json > "$E2E_STATE/bootcheck.json" || rc=$?
head -n 40 "$E2E_STATE/bootcheck.json" | sed -u 's/^/    /'
check "boot-check of the marker point" "$([ "$rc" = 0 ] && echo 1 || echo 0)" \
  "exit $rc: $(jq_py 'print(d.get("result"), "boot", d.get("boot_seconds"), "s;", [c["name"] for c in d.get("checks", []) if c["ok"]])' \
  < "$E2E_STATE/bootcheck.json" 2>/dev/null || true)"
end_step

begin "vagrant destroy"
vag destroy -f 2>&1 | sed -u 's/^/    /'
[ "${PIPESTATUS[0]}" = 0 ]
DESTROYED=1
left=$(virsh_in list --all --name | grep -v '^$' | tr '\n' ' ' || true)
log "   domains left in the private libvirtd (restored copy; removed by teardown): ${left:-none}"
end_step
exit 0
