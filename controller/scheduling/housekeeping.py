"""What `vmbackup serve` runs besides backups: the retention prune pass and the vault verify job.

Both read and write only the state DB and the vault named by the settings, each pass on a State of its own (they
run on worker threads), closed when the pass ends. Usage::

    job_id, _, text = prune_pass(settings, ["<vm-uuid>", ...])    # one prune job per VM, then the due purges
    job_id, _, text = verify_vault(settings)                      # one 'verify' job; POINT_CORRUPT if any is bad
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from controller.errors import VmBackupError
from controller.jobs.exceptions import OperationInProgress
from controller.jobs.model import parse_time
from controller.jobs.store import JobStore
from controller.scheduling.workers import RunResult
from controller.settings import Settings
from controller.state import open_state
from controller.vault import RecoveryPoint
from controller.vault.exceptions import PointCorrupt
from controller.vault.vault import VerifyResult
from controller.vault.verdicts import record_verify

#: The lock key of the verify job: one verify of the vault at a time, across processes.
VERIFY_LOCK = "verify:vault"
#: a soft-deleted point a purge leaves for later without failing the pass: a VM runs on it, or it is protected
_BUSY_POINT = ("POINT_PINNED", "POINT_PROTECTED")


def prune_pass(settings: Settings, vm_uuids: Iterable[str]) -> RunResult:
    """Apply retention to each VM (a prune job each); a VM busy with another job is left for the next pass. Then
    purge the soft-deleted points (of every VM) whose purge time has passed (recycle.purge)."""
    from controller.scheduling.prune import prune
    from controller.vault import recycle

    deleted, skipped, errors = 0, [], []
    with open_state(settings) as st:
        for uuid in vm_uuids:
            try:
                for r in prune(st, vm=uuid):
                    deleted += len(r.deleted)
            except OperationInProgress:
                skipped.append(uuid)
            except VmBackupError as e:
                errors.append(f"{uuid}: {e}")
        purged = recycle.purge(st.vault)
    errors += [f"purge {p}: {why}" for p, why in purged.skipped.items() if not why.startswith(_BUSY_POINT)]
    if errors:
        raise VmBackupError(f"prune failed for {len(errors)} VM(s): {'; '.join(errors)}")
    text = f"deleted {deleted} point(s)" + (f", {len(skipped)} VM(s) busy: next pass" if skipped else "")
    text += f", purged {len(purged.purged)} soft-deleted point(s)"
    return None, None, text


def verify_vault(settings: Settings) -> RunResult:
    """Verify every published point (SHA-256 + qemu-img check) as one 'verify' job; records each on its point."""
    with open_state(settings) as st:
        jobs, vault = JobStore(st.db), st.vault
        job = jobs.create("verify", lock_key=VERIFY_LOCK, details={"vault": str(settings.vault)})
        with jobs.run(job.id) as run:
            def recorded(p: RecoveryPoint, res: VerifyResult) -> None:
                try:
                    record_verify(vault, p, res)  # retention keeps the newest point that verified
                except (VmBackupError, OSError) as e:
                    run.warn(f"could not record the verify result on {p.point_id}: {e}")
                run.add_bytes(p.stored_bytes)
                run.check_cancelled()

            with run.phase("verify"):
                # every point separately: one that cannot be loaded (crafted ids, a symlinked VM directory) is a
                # failing entry, never a reason to skip the others
                results = vault.verify_all(on_point=recorded)
                bad = [r.to_dict() for r in results if not r.ok]
                run.detail("checked", len(results))
                run.detail("bad", bad)
            if bad:
                ids = ", ".join(str(b["point_id"] or f"VM directory {b['vm_uuid']}") for b in bad)
                raise PointCorrupt(
                    f"{len(bad)} of {len(results)} recovery points failed verification: {ids}",
                    details={"bad": bad},
                )
        return job.id, None, f"{len(results)} point(s) verified"


def last_job_times(conn: sqlite3.Connection, type: str) -> dict[str, datetime]:
    """The newest job of a type per VM uuid (or per lock key for VM-less jobs), from the jobs table."""
    rows = conn.execute(
        "SELECT COALESCE(vm_uuid, lock_key, '') AS k, MAX(created_at) AS t FROM jobs WHERE type = ? GROUP BY k",
        (type,),
    ).fetchall()
    out = {}
    for r in rows:
        t = parse_time(r["t"])
        if t is not None:
            out[str(r["k"])] = t
    return out


def latest_job_time(conn: sqlite3.Connection, type: str) -> datetime | None:
    """When the newest job of this type was created, if any."""
    row = conn.execute("SELECT MAX(created_at) AS t FROM jobs WHERE type = ?", (type,)).fetchone()
    return parse_time(row["t"]) if row is not None else None


def completed_backups(conn: sqlite3.Connection, vm_uuid: str) -> int:
    """How many backups of this VM completed (the boot-check cadence counts them)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE type = 'backup' AND state = 'completed' AND vm_uuid = ?", (vm_uuid,)
    ).fetchone()
    return int(row[0])
