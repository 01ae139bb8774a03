"""Write tests/state/v0.1.0-state.sql, a dump of a state.db made by the code of 0.1.0 (commit cbe87ea).

    git worktree add --detach /tmp/v010 cbe87ea
    cd /tmp/v010 && PYTHONPATH=/tmp/v010 /work/main/.venv/bin/python /work/main/tests/state/make_v010_db.py \
        /work/main/tests/state/v0.1.0-state.sql

It records one of each thing the state database holds (host, VM, registration, policy, protection, job with a phase,
backup intent) through 0.1.0's own store functions, then dumps it as SQL (the database file itself is 100 KiB).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from controller import db
from controller.backup.intent import IntentStore
from controller.inventory.hosts import add_host
from controller.inventory.store import DiskInfo, VmInfo, record_host
from controller.jobs.store import JobStore, VmRef
from controller.policies import store as policies
from controller.policies.parse import parse_text, to_yaml
from controller.registration.store import Registration, save

URI = "qemu:///system"
UUID = "6b0f3c1e-0000-4000-8000-000000000010"


def main(out: Path) -> None:
    """Write the dump of a 0.1.0 database to out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        fill(path)
        old = sqlite3.connect(path)
        out.write_text("\n".join(old.iterdump()) + "\n")
        old.close()


def fill(path: Path) -> None:
    """Create a state.db at path with 0.1.0's code and put one of everything in it."""
    conn = db.connect(path)
    add_host(conn, URI, "local")
    record_host(conn, URI, [VmInfo(UUID, "old-vm", URI, "running", [DiskInfo("vda", "/var/lib/old.qcow2", "qcow2")])])
    save(conn, Registration(UUID, "old-vm", URI, "127.0.0.1", 7470, "127.0.0.1", 2222, "root", None, "0.1.0",
                            "1a2b", "2026-11-01T00:00:00+00:00"))
    policy = parse_text("name: nightly\nschedule: {daily: '22:00'}\nretention: {keep_last: 2}\n")[0]
    policies.save_policy(conn, policy, to_yaml(policy))
    policies.bind(conn, UUID, "old-vm", "nightly")
    jobs = JobStore(conn)
    job = jobs.create("backup", VmRef(UUID, "old-vm", URI))
    with jobs.start(job.id).phase("copy"):
        pass
    jobs.finish(job.id)
    IntentStore(conn).begin(job.id, UUID, "old-vm", URI, {"vda": "/var/lib/old.qcow2"})
    conn.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
