"""The durable intent record of a running backup: what the controller is about to do to a VM, step by step.

It is written before the VM is touched and updated (synchronously, in its own transaction) at every step, so a
controller that dies anywhere leaves enough behind for ``recovery.recover`` to put the VM back without guessing::

    intents = IntentStore(conn)
    intents.begin(job_id, vm_uuid, vm_name, host_uri, {"vda": "/x/root.qcow2"})      # step "started"
    intents.step(job_id, "frozen", freeze_token="...")
    intents.step(job_id, "snapshotted", overlays={"vda": "/x/root.vmb-J.qcow2"})
    intents.done(job_id)                                                              # the record is deleted

The engine writes the steps of :data:`STEPS` in that order; a running VM goes through all of them ("frozen" only
when the agent froze), a shut-off VM through "started", "copying" and "copied".
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller import db

#: every step an intent can be at; ``begin`` writes "started", a finished backup's record is deleted (``done``)
STEPS = ("started", "frozen", "snapshotted", "thawed", "copying", "copied", "committing", "committed")


@dataclass
class Intent:
    """One backup's intent record."""

    job_id: str
    vm_uuid: str
    vm_name: str
    host_uri: str
    step: str
    originals: dict[str, str]
    overlays: dict[str, str] = field(default_factory=dict)
    point_id: str | None = None
    freeze_token: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class IntentStore:
    """Reads and writes intent records; every write is its own durable transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def begin(self, job_id: str, vm_uuid: str, vm_name: str, host_uri: str, originals: dict[str, str]) -> Intent:
        """Record that a backup is about to touch a VM."""
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO backup_intents (job_id, vm_uuid, vm_name, host_uri, step, originals, updated_at) "
                "VALUES (?, ?, ?, ?, 'started', ?, ?)",
                (job_id, vm_uuid, vm_name, host_uri, json.dumps(originals), _now()),
            )
        return Intent(job_id, vm_uuid, vm_name, host_uri, "started", dict(originals))

    def step(
        self,
        job_id: str,
        step: str,
        *,
        overlays: dict[str, str] | None = None,
        point_id: str | None = None,
        freeze_token: str | None = None,
    ) -> None:
        """Move an intent to a step, recording what that step created."""
        if step not in STEPS:
            raise ValueError(f"unknown intent step {step!r}")
        sets, args = ["step = ?", "updated_at = ?"], [step, _now()]
        if overlays is not None:
            sets.append("overlays = ?")
            args.append(json.dumps(overlays))
        if point_id is not None:
            sets.append("point_id = ?")
            args.append(point_id)
        if freeze_token is not None:
            sets.append("freeze_token = ?")
            args.append(freeze_token)
        with db.transaction(self.conn):
            self.conn.execute(f"UPDATE backup_intents SET {', '.join(sets)} WHERE job_id = ?", (*args, job_id))

    def done(self, job_id: str) -> None:
        """Forget an intent whose backup ended with the VM back on its own disks."""
        with db.transaction(self.conn):
            self.conn.execute("DELETE FROM backup_intents WHERE job_id = ?", (job_id,))

    def pending(self) -> list[Intent]:
        """Every intent still recorded: backups that did not finish cleanly (or are running right now)."""
        rows = self.conn.execute("SELECT * FROM backup_intents ORDER BY updated_at").fetchall()
        return [
            Intent(
                job_id=r["job_id"],
                vm_uuid=r["vm_uuid"],
                vm_name=r["vm_name"],
                host_uri=r["host_uri"],
                step=r["step"],
                originals=json.loads(r["originals"]),
                overlays=json.loads(r["overlays"]),
                point_id=r["point_id"],
                freeze_token=r["freeze_token"],
            )
            for r in rows
        ]
