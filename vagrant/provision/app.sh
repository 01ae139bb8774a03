#!/bin/bash
# Provision the application VM: a data disk on /data1, a service (labapp) writing rows into a SQLite DB there, and
# the vmbackup-agent freeze hook that pauses the writer and checkpoints the DB while the filesystems are frozen.
set -euo pipefail
log() { echo "[provision app] $*"; }

if ! blkid -L data1 >/dev/null 2>&1; then
  log "formatting /dev/vdb as data1"
  mkfs.ext4 -q -L data1 /dev/vdb
fi
mkdir -p /data1
mountpoint -q /data1 || mount /data1          # LABEL=data1 /data1 is in the image's fstab
mkdir -p /data1/labapp /opt/labapp /etc/vmbackup-agent/hooks.d

cat > /opt/labapp/writer.py <<'PY'
"""labapp: insert one row per half second into /data1/labapp/app.db (WAL); pause while /run/labapp/pause exists."""
import os
import sqlite3
import time

DB, PAUSE, ACK = "/data1/labapp/app.db", "/run/labapp/pause", "/run/labapp/paused"
con = sqlite3.connect(DB, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts TEXT, kind TEXT, note TEXT)")
seq = con.execute("SELECT count(*) FROM events WHERE kind = 'tick'").fetchone()[0]
while True:
    if os.path.exists(PAUSE):
        if not os.path.exists(ACK):  # tell the freeze hook no transaction is open
            with open(ACK, "w") as f:
                f.write(str(seq))
        time.sleep(0.05)
        continue
    con.execute("INSERT INTO events (ts, kind, note) VALUES (datetime('now'), 'tick', ?)", (str(seq),))
    seq += 1
    time.sleep(0.5)
PY

cat > /etc/systemd/system/labapp.service <<'UNIT'
[Unit]
Description=labapp: a tiny SQLite writer (vmbackup e2e application)
After=local-fs.target
RequiresMountsFor=/data1
[Service]
ExecStart=/usr/bin/python3 /opt/labapp/writer.py
RuntimeDirectory=labapp
RuntimeDirectoryPreserve=yes
Restart=always
[Install]
WantedBy=multi-user.target
UNIT

# The freeze hook (run by vmbackup-agent as root with `freeze` / `thaw`). It must not write to the frozen
# filesystems after FIFREEZE: it only touches /run (tmpfs) and does its DB work before the freeze.
cat > /etc/vmbackup-agent/hooks.d/50-labapp <<'HOOK'
#!/bin/sh
set -eu
DB=/data1/labapp/app.db
case "${1:-}" in
  freeze)
    rm -f /run/labapp/paused
    touch /run/labapp/pause
    i=0
    while [ ! -e /run/labapp/paused ]; do
      i=$((i + 1)); [ $i -le 200 ] || { echo "labapp writer did not pause in 10 s" >&2; exit 1; }
      sleep 0.05
    done
    out=$(sqlite3 "$DB" 'PRAGMA wal_checkpoint(TRUNCATE);')
    [ "${out%%|*}" = 0 ] || { echo "checkpoint busy: $out" >&2; exit 1; }
    sync
    echo "labapp paused at row $(cat /run/labapp/paused), checkpoint $out"
    ;;
  thaw)
    rm -f /run/labapp/pause /run/labapp/paused
    echo "labapp resumed"
    ;;
esac
HOOK
chmod 0755 /etc/vmbackup-agent/hooks.d/50-labapp
chmod 0755 /etc/vmbackup-agent /etc/vmbackup-agent/hooks.d

systemctl daemon-reload
systemctl enable --now labapp.service
for _ in $(seq 50); do
  n=$(sqlite3 /data1/labapp/app.db "SELECT count(*) FROM events" 2>/dev/null || echo 0)
  [ "$n" -gt 0 ] && break
  sleep 0.2
done
log "labapp running: $(sqlite3 /data1/labapp/app.db 'SELECT count(*) FROM events') rows;" \
  "hook $(ls /etc/vmbackup-agent/hooks.d)"
