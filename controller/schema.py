"""The state database's schema, every table of every layer, as ordered migrations.

:func:`controller.db.connect` applies them: ``PRAGMA user_version`` is the number of the last migration applied,
and each migration runs once, inside the ``BEGIN IMMEDIATE`` transaction that also sets the new version, so two
processes opening a fresh database at once do not both migrate. Usage::

    LATEST                        # the version this code writes and reads
    for m in MIGRATIONS:          # in order; db.migrate applies those after the database's version
        for stmt in m.statements(): ...

Migration 1 is the complete schema of 0.1.0, each CREATE exactly as 0.1.0 issued it. 0.1.0 created its tables
piecemeal at import time and never set ``user_version``, so a database it made reads as version 0 with (some or
all of) these tables present; migration 1 is written ``IF NOT EXISTS`` so that applying it to such a database
creates only what is missing and stamps it as version 1. A change to the schema is a new migration appended to
:data:`MIGRATIONS` (``ALTER TABLE ...``, a new table), never an edit of an applied one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version number, what it does, and its SQL (statements separated by ';')."""

    version: int
    summary: str
    sql: str

    def statements(self) -> Iterator[str]:
        """The SQL's statements one by one (``executescript`` would COMMIT the migration's transaction)."""
        buf = ""
        for line in self.sql.splitlines(keepends=True):
            buf += line
            if sqlite3.complete_statement(buf):
                yield buf.strip()
                buf = ""
        if buf.strip():
            raise ValueError(f"migration {self.version}: incomplete SQL statement: {buf.strip()[:60]!r}")


_V1 = """
-- inventory (controller/inventory/hosts.py, store.py)
CREATE TABLE IF NOT EXISTS hosts (
    uri TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host_uri TEXT NOT NULL,
    state TEXT NOT NULL,
    disks_json TEXT NOT NULL DEFAULT '[]',
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    gone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS vms_host ON vms(host_uri);
CREATE INDEX IF NOT EXISTS vms_name ON vms(name);

-- jobs (controller/jobs/store.py)
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    vm_uuid TEXT,
    vm_name TEXT,
    host_uri TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    details_json TEXT NOT NULL DEFAULT '{}',
    error_code TEXT,
    error_message TEXT,
    error_remediation TEXT,
    owner_pid INTEGER,
    owner_start TEXT,
    lock_key TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_vm ON jobs(vm_uuid);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_phases (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    duration_s REAL,
    bytes INTEGER,
    PRIMARY KEY (job_id, seq)
);
-- one operation per VM: the key is the VM uuid, or e.g. 'discover:<uri>' for host-level exclusive jobs
CREATE TABLE IF NOT EXISTS vm_locks (
    vm_uuid TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    acquired_at TEXT NOT NULL
);

-- registration (controller/registration/store.py)
CREATE TABLE IF NOT EXISTS registrations (
    vm_uuid       TEXT PRIMARY KEY,
    vm_name       TEXT NOT NULL,
    host_uri      TEXT NOT NULL,
    agent_host    TEXT NOT NULL,
    agent_port    INTEGER NOT NULL,
    ssh_host      TEXT NOT NULL,
    ssh_port      INTEGER NOT NULL,
    ssh_user      TEXT NOT NULL,
    ssh_key       TEXT,
    agent_version TEXT NOT NULL,
    cert_serial   TEXT NOT NULL,
    registered_at TEXT NOT NULL
);

-- policies (controller/policies/store.py)
CREATE TABLE IF NOT EXISTS policies (
    name        TEXT PRIMARY KEY,
    yaml        TEXT NOT NULL,
    parsed_json TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS protections (
    vm_uuid TEXT PRIMARY KEY,
    policy  TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('protected', 'unprotected-retain')),
    since   TEXT NOT NULL,
    vm_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS protections_policy ON protections(policy);

-- backup intents (controller/backup/intent.py)
CREATE TABLE IF NOT EXISTS backup_intents (
    job_id      TEXT PRIMARY KEY,
    vm_uuid     TEXT NOT NULL,
    vm_name     TEXT NOT NULL,
    host_uri    TEXT NOT NULL,
    step        TEXT NOT NULL,
    originals   TEXT NOT NULL,          -- JSON {target: original disk path}
    overlays    TEXT NOT NULL DEFAULT '{}',
    point_id    TEXT,
    freeze_token TEXT,
    updated_at  TEXT NOT NULL
);
"""

#: Every migration, in order; ``MIGRATIONS[i].version == i + 1``.
_V2 = """
-- VMs whose disks were replaced or whose checkpoints were removed (controller/backup/cbt.py): next backup is full
CREATE TABLE IF NOT EXISTS chain_resets (
    vm_uuid TEXT PRIMARY KEY,
    at      TEXT NOT NULL,
    reason  TEXT NOT NULL
);
"""

_V3 = """
-- how backups freeze the guest (controller/backup/quiescers.py): agent | qga | none; rows before 3 had the agent
ALTER TABLE registrations ADD COLUMN quiescer TEXT NOT NULL DEFAULT 'agent';
"""

_V4 = """
-- notification incidents (controller/notify/incidents.py): at most one open row per (kind, subject), so an
-- incident is announced once; a resolved row re-arms it (the next occurrence opens a new row)
CREATE TABLE IF NOT EXISTS incidents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,          -- job_failed | backup_missed | consistency_low | boot_check_failed | ...
    subject     TEXT NOT NULL,          -- a vm uuid (job_failed: '<vm uuid>/<job type>'), or 'vault'
    vm_name     TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    severity    TEXT NOT NULL,
    summary     TEXT NOT NULL,
    details_json TEXT NOT NULL DEFAULT '{}',
    opened_at   TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    resolved_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open ON incidents(kind, subject) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents(opened_at);
-- one message per incident per channel: 'opened' (and 'resolved' where the channel wants it)
CREATE TABLE IF NOT EXISTS notify_deliveries (
    incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    what        TEXT NOT NULL CHECK (what IN ('opened', 'resolved')),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT NOT NULL,
    sent_at     TEXT,
    last_error  TEXT,
    PRIMARY KEY (incident_id, channel, what)
);
-- when each digest channel last got its daily digest
CREATE TABLE IF NOT EXISTS notify_digests (
    channel TEXT PRIMARY KEY,
    sent_at TEXT NOT NULL
);
"""

_V5 = """
-- a VM's newest job of a type in one index probe (the dashboard's last backup per VM, controller/dashboard/queries.py)
CREATE INDEX IF NOT EXISTS jobs_vm_type_created ON jobs(vm_uuid, type, created_at, id);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the schema of 0.1.0", _V1),
    Migration(2, "chain_resets: incremental chains reset by restore --replace, unprotect, unregister", _V2),
    Migration(3, "registrations.quiescer: the vmbackup agent, the QEMU guest agent, or none", _V3),
    Migration(4, "incidents, notify_deliveries, notify_digests: notifications (controller/notify/)", _V4),
    Migration(5, "jobs_vm_type_created: a VM's newest job of a type by index (the dashboard)", _V5),
)

#: The schema version this code reads and writes.
LATEST = MIGRATIONS[-1].version

