"""Job records in the SQLite state database: creation with a per-VM lock, running, phases, cancel, recovery.

Every operation (discover, register, backup, restore, ...) is a job. Usage::

    from controller.jobs.store import JobStore, VmRef

    store = JobStore(conn)                         # or JobStore.open(settings.db_path)
    job = store.create("backup", vm=VmRef(uuid, name, host_uri))   # queued; takes the VM lock
    #   -> OperationInProgress (OPERATION_IN_PROGRESS) if another job holds that VM
    with store.run(job.id) as run:                 # -> in-progress, owned by this process
        with run.phase("freeze"):
            ...
        run.add_bytes(n)                           # job total + current phase
        run.detail("consistency", "FILE_SYSTEM")   # free-form details JSON
        run.warn("agent is older than the controller")
        run.check_cancelled()                      # raises JobCancelled after `vmbackup job cancel ID`
    # on exit: completed; or cancelled (JobCancelled); or failed with the VmBackupError's code, message and
    # remediation (other exceptions: INTERNAL_ERROR + text). The error is re-raised; the lock is released.

Host-level exclusive jobs pass a lock key instead of a VM: ``store.create("discover", host_uri=uri,
lock_key=f"discover:{uri}")`` -> DiscoveryInProgress while another discovery of that host runs.

At controller start call ``store.recover_orphans()``: jobs whose owner process is gone are marked failed
(CONTROLLER_RESTARTED) and their locks released. Everything is in SQLite, so jobs survive restarts;
exclusivity is enforced by the ``vm_locks`` primary key inside ``BEGIN IMMEDIATE`` transactions, so it holds
across threads and processes. A JobStore serialises use of its connection with a lock: threads may share it.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller import db
from controller.errors import VmBackupError
from controller.jobs import liveness
from controller.jobs.exceptions import (
    ControllerRestarted,
    JobCancelled,
    JobNotFound,
    JobStateError,
    lock_refused,
)
from controller.jobs.model import ACTIVE_STATES, JOB_STATES, JOB_TYPES, Job, VmRef, phase_from_row, utcnow
from controller.jobs.run import JobRun

__all__ = ["Job", "JobRun", "JobStore", "VmRef"]

_Rows = list[sqlite3.Row]
_Jobs = list[Job]


def new_job_id() -> str:
    """A short id that sorts by creation time: 20250101-120000-3fa9c1."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class JobStore:
    """Job records, phases and per-VM locks in one state database (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._mutex = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> JobStore:
        """A store on its own connection to the state database at path."""
        return cls(db.connect(path))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE on this store's connection, serialised between threads."""
        with self._mutex, db.transaction(self.conn) as c:
            yield c

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> _Rows:
        """One statement (autocommit), serialised between threads."""
        with self._mutex:
            return list(self.conn.execute(sql, params).fetchall())

    def create(
        self,
        type: str,
        vm: VmRef | None = None,
        *,
        host_uri: str | None = None,
        lock: bool | None = None,
        lock_key: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Job:
        """Record a queued job owned by this process; lock (default: when vm is given) takes the VM's lock."""
        if type not in JOB_TYPES:
            raise VmBackupError(f"unknown job type {type!r}")
        if lock is None:
            lock = vm is not None or lock_key is not None
        key = lock_key or (vm.uuid if vm else None) if lock else None
        if lock and key is None:
            raise VmBackupError("a job lock needs a VM or a lock_key")
        job_id, now = new_job_id(), utcnow()
        with self._tx() as c:
            if key is not None:
                self._acquire(c, key, type, job_id, now)
            c.execute(
                "INSERT INTO jobs (id, type, vm_uuid, vm_name, host_uri, state, created_at, details_json,"
                " owner_pid, owner_start, lock_key) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (
                    job_id,
                    type,
                    vm.uuid if vm else None,
                    vm.name if vm else None,
                    (vm.host_uri if vm else None) or host_uri,
                    now,
                    _json(details or {}),
                    os.getpid(),
                    liveness.start_marker(),
                    key,
                ),
            )
        return self.get(job_id)

    def _acquire(self, c: sqlite3.Connection, key: str, type: str, job_id: str, now: str) -> None:
        """Insert the lock row, taking over a stale one (holder finished or its owner dead); else refuse."""
        row = c.execute(
            "SELECT l.job_id, j.type, j.state, j.owner_pid, j.owner_start, j.vm_name FROM vm_locks l"
            " LEFT JOIN jobs j ON j.id = l.job_id WHERE l.vm_uuid = ?",
            (key,),
        ).fetchone()
        if row is not None:
            live = row["state"] in ACTIVE_STATES and liveness.is_alive(row["owner_pid"], row["owner_start"])
            if live:
                raise lock_refused(key, row["job_id"], row["type"], row["vm_name"])
            if row["state"] in ACTIVE_STATES:  # its owner died without finishing: fail it now
                _fail_orphan(c, row["job_id"], utcnow())
            c.execute("DELETE FROM vm_locks WHERE vm_uuid = ?", (key,))
        c.execute("INSERT INTO vm_locks (vm_uuid, job_id, acquired_at) VALUES (?, ?, ?)", (key, job_id, now))

    def start(self, job_id: str) -> JobRun:
        """queued -> in-progress, owned by this process (for use without the context manager; see finish)."""
        with self._tx() as c:
            row = c.execute(
                "SELECT state, details_json, type, vm_name, host_uri FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            if row["state"] == "cancelled":
                raise JobCancelled(f"job {job_id} was cancelled before it started", details={"job_id": job_id})
            if row["state"] != "queued":
                raise JobStateError(f"job {job_id} is {row['state']}, not queued")
            c.execute(
                "UPDATE jobs SET state = 'in-progress', started_at = ?, owner_pid = ?, owner_start = ? WHERE id = ?",
                (utcnow(), os.getpid(), liveness.start_marker(), job_id),
            )
        return JobRun(self, job_id, _loads(row["details_json"]), row["type"], row["vm_name"] or row["host_uri"] or "")

    def finish(self, job_id: str, error: BaseException | None = None) -> Job:
        """End a job: completed (no error), cancelled (JobCancelled) or failed (recording it); unlock."""
        if error is None:
            state, err = "completed", None
        elif isinstance(error, JobCancelled):
            state, err = "cancelled", error.to_dict()
        elif isinstance(error, VmBackupError):
            state, err = "failed", error.to_dict()
        else:
            text = f"{type(error).__name__}: {error}".strip()
            state, err = "failed", VmBackupError(text or "interrupted").to_dict()
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            if row["state"] not in ACTIVE_STATES:
                raise JobStateError(f"job {job_id} already ended ({row['state']})")
            _end(c, job_id, state, err, utcnow())
        return self.get(job_id)

    @contextmanager
    def run(self, job_id: str) -> Iterator[JobRun]:
        """``with store.run(job.id) as run:`` start the job; end it by how the block exits (re-raising)."""
        run = self.start(job_id)
        try:
            yield run
        except BaseException as e:
            self.finish(job_id, e)
            raise
        self.finish(job_id)

    def _phase_begin(self, job_id: str, name: str) -> int:
        """Insert a running phase row; returns its sequence number."""
        with self._tx() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_phases WHERE job_id = ?", (job_id,)).fetchone()[
                0
            ]
            c.execute(
                "INSERT INTO job_phases (job_id, seq, name, state, started_at) VALUES (?, ?, ?, 'running', ?)",
                (job_id, seq, name, utcnow()),
            )
        return int(seq)

    def _phase_end(self, job_id: str, seq: int, state: str, duration_s: float, nbytes: int | None) -> None:
        """Close a phase row."""
        self._exec(
            "UPDATE job_phases SET state = ?, ended_at = ?, duration_s = ?, bytes = ? WHERE job_id = ? AND seq = ?",
            (state, utcnow(), duration_s, nbytes, job_id, seq),
        )

    def _add_bytes(self, job_id: str, n: int) -> None:
        """Add n to the job's byte total."""
        self._exec("UPDATE jobs SET bytes_total = bytes_total + ? WHERE id = ?", (n, job_id))

    def _set_details(self, job_id: str, details_json: str) -> None:
        """Replace the job's details JSON."""
        self._exec("UPDATE jobs SET details_json = ? WHERE id = ?", (details_json, job_id))

    def _cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was requested for this job."""
        rows = self._exec("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def get(self, job_id: str) -> Job:
        """One job with its phases, or JobNotFound."""
        rows = self._exec("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id!r}")
        return self._with_phases(rows)[0]

    def list(
        self,
        type: str | None = None,
        state: str | None = None,
        vm: str | None = None,
        since: timedelta | None = None,
        limit: int | None = None,
        host_uri: str | None = None,
    ) -> _Jobs:
        """Jobs, newest first, filtered by type, state, VM (name or uuid), age, host; at most limit."""
        if state is not None and state not in JOB_STATES:
            raise JobStateError(f"unknown job state {state!r}", remediation=f"Use one of: {', '.join(JOB_STATES)}.")
        where, params = ["1 = 1"], []
        for col, val in (("type", type), ("state", state), ("host_uri", host_uri)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if vm is not None:
            where.append("(vm_uuid = ? OR vm_name = ?)")
            params += [vm, vm]
        if since is not None:
            where.append("created_at >= ?")
            params.append((datetime.now(UTC) - since).isoformat(timespec="microseconds"))
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._with_phases(self._exec(sql, tuple(params)))

    def latest_per_vm(self, type: str) -> dict[str, Job]:
        """The newest job of a type for every VM, in one query (the dashboard's per-VM 'last backup')."""
        rows = self._exec(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY vm_uuid ORDER BY created_at DESC, id DESC) AS rn"
            " FROM jobs WHERE type = ? AND vm_uuid IS NOT NULL) WHERE rn = 1",
            (type,),
        )
        return {j.vm.uuid: j for j in self._with_phases(rows) if j.vm is not None}

    def _with_phases(self, rows: _Rows) -> _Jobs:
        """Attach phases to job rows."""
        out = []
        for r in rows:
            ph = self._exec("SELECT * FROM job_phases WHERE job_id = ? ORDER BY seq", (r["id"],))
            out.append(Job.from_row(r, [phase_from_row(p) for p in ph]))
        return out

    def lock_holder(self, key: str) -> str | None:
        """The id of the job holding the lock key (a VM uuid or e.g. 'discover:<uri>'), if any."""
        rows = self._exec("SELECT job_id FROM vm_locks WHERE vm_uuid = ?", (key,))
        return str(rows[0]["job_id"]) if rows else None

    def is_owner_alive(self, job_id: str) -> bool:
        """True if the job is queued/in-progress and the process that owns it is still running."""
        rows = self._exec("SELECT state, owner_pid, owner_start FROM jobs WHERE id = ?", (job_id,))
        if not rows or rows[0]["state"] not in ACTIVE_STATES:
            return False
        return liveness.is_alive(rows[0]["owner_pid"], rows[0]["owner_start"])

    def request_cancel(self, job_id: str) -> str:
        """Cancel: 'cancelled' (was queued: done at once) or 'requested' (running: stops at next check)."""
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            if row["state"] == "queued":
                err = JobCancelled(f"job {job_id} was cancelled before it started").to_dict()
                c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                _end(c, job_id, "cancelled", err, utcnow())
                return "cancelled"
            if row["state"] == "in-progress":
                c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                return "requested"
        raise JobStateError(f"job {job_id} already ended ({row['state']}); nothing to cancel")

    def recover_orphans(self) -> _Jobs:
        """Mark failed (CONTROLLER_RESTARTED) every active job whose owner is dead; release their locks."""
        failed: list[str] = []
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, owner_pid, owner_start FROM jobs WHERE state IN ('queued', 'in-progress')"
            ).fetchall()
            now = utcnow()
            for r in rows:
                if not liveness.is_alive(r["owner_pid"], r["owner_start"]):
                    _fail_orphan(c, r["id"], now)
                    failed.append(r["id"])
            # locks whose job has ended (or vanished) are stale too
            c.execute(
                "DELETE FROM vm_locks WHERE job_id NOT IN"
                " (SELECT id FROM jobs WHERE state IN ('queued', 'in-progress'))"
            )
        return [self.get(j) for j in failed]


def _end(c: sqlite3.Connection, job_id: str, state: str, err: dict[str, Any] | None, now: str) -> None:
    """Write a job's final state and error, close open phases, release its lock (inside a transaction)."""
    err = err or {}
    c.execute(
        "UPDATE jobs SET state = ?, ended_at = ?, error_code = ?, error_message = ?, error_remediation = ?"
        " WHERE id = ?",
        (state, now, err.get("code"), err.get("message"), err.get("remediation"), job_id),
    )
    c.execute(
        "UPDATE job_phases SET state = ?, ended_at = ? WHERE job_id = ? AND state = 'running'",
        ("failed" if state == "failed" else state, now, job_id),
    )
    c.execute("DELETE FROM vm_locks WHERE job_id = ?", (job_id,))


def _fail_orphan(c: sqlite3.Connection, job_id: str, now: str) -> None:
    """Mark a job whose owner process died as failed with CONTROLLER_RESTARTED."""
    err = ControllerRestarted(f"the process running job {job_id} ended before the job finished").to_dict()
    _end(c, job_id, "failed", err, now)


def _json(value: dict[str, Any]) -> str:
    """Serialise details (non-JSON values as strings)."""
    return json.dumps(value, default=str)


def _loads(text: str | None) -> dict[str, Any]:
    """Parse details JSON."""
    out: dict[str, Any] = json.loads(text or "{}")
    return out
