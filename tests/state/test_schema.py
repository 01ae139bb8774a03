"""The state database's one schema (controller/schema.py) and its ``user_version`` migrations in db.connect."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from controller import db, schema
from controller.exceptions import StateSchemaTooNew
from controller.inventory.hosts import list_hosts
from controller.inventory.store import find_vm
from controller.jobs.store import JobStore
from controller.policies import store as policies
from controller.registration.store import get_registration

HERE = Path(__file__).resolve().parent
OLD_UUID = "6b0f3c1e-0000-4000-8000-000000000010"  # what make_v010_db.py recorded


def _v010_db(path: Path) -> Path:
    """A state.db exactly as 0.1.0 left it (from the dump of one it made): tables present, user_version 0."""
    raw = sqlite3.connect(path)
    raw.executescript((HERE / "v0.1.0-state.sql").read_text())
    raw.close()
    return path


def _shape(conn: sqlite3.Connection) -> dict[str, object]:
    """Every table's columns (name, type, notnull, default, pk) and every index's columns."""
    out: dict[str, object] = {}
    for (name, kind) in conn.execute("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
        if kind == "table":
            out[name] = [tuple(r)[1:] for r in conn.execute(f"PRAGMA table_info({name})")]
        elif kind == "index":
            out[name] = [tuple(r) for r in conn.execute(f"PRAGMA index_info({name})")]
    return out


def test_fresh_database_is_at_the_latest_version(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    assert db.user_version(conn) == schema.LATEST
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"hosts", "vms", "jobs", "job_phases", "vm_locks", "registrations", "policies", "protections",
            "backup_intents"} <= tables


def test_v010_database_opens_migrates_and_reads(tmp_path: Path) -> None:
    path = _v010_db(tmp_path / "state.db")
    raw = sqlite3.connect(path)
    assert db.user_version(raw) == 0
    old_shape = _shape(raw)
    raw.close()

    conn = db.connect(path)
    assert db.user_version(conn) == schema.LATEST
    fresh = db.connect(tmp_path / "fresh.db")
    assert _shape(conn) == _shape(fresh)  # the migrated 0.1.0 database has exactly today's schema
    if schema.LATEST == 1:
        assert _shape(conn) == old_shape  # migration 1 recognised 0.1.0's tables as its own

    vm = find_vm(conn, "old-vm")
    assert vm is not None and vm.uuid == OLD_UUID and vm.registered and vm.protected and vm.policy == "nightly"
    assert vm.disks[0].path == "/var/lib/old.qcow2"
    reg = get_registration(conn, OLD_UUID)
    assert reg is not None and (reg.agent_port, reg.agent_version) == (7470, "0.1.0")
    assert policies.get_policy(conn, "nightly").policy.retention.keep_last == 2
    (job,) = JobStore(conn).list(type="backup")
    assert job.state == "completed" and [p.name for p in job.phases] == ["copy"]
    assert [h.uri for h in list_hosts(conn, "qemu:///system")] == ["qemu:///system"]
    (step,) = conn.execute("SELECT step FROM backup_intents WHERE job_id = ?", (job.id,)).fetchone()
    assert step == "started"
    conn.close()

    again = db.connect(path)  # opening twice is idempotent: same version, same rows
    assert db.user_version(again) == schema.LATEST
    assert _shape(again) == _shape(fresh)
    assert again.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


def test_partial_v010_database_gets_the_missing_tables(tmp_path: Path) -> None:
    """0.1.0 created tables as modules were imported: a database may hold only some of them."""
    raw = sqlite3.connect(tmp_path / "state.db")
    raw.execute("CREATE TABLE hosts (uri TEXT PRIMARY KEY, name TEXT NOT NULL, added_at TEXT NOT NULL)")
    raw.execute("INSERT INTO hosts VALUES ('qemu:///system', 'local', 'then')")
    raw.commit()
    raw.close()
    conn = db.connect(tmp_path / "state.db")
    assert db.user_version(conn) == schema.LATEST
    assert _shape(conn) == _shape(db.connect(tmp_path / "fresh.db"))
    assert [h.name for h in list_hosts(conn, "qemu:///system")] == ["local"]


def test_later_migrations_apply_in_order_once(tmp_path: Path) -> None:
    extra = (
        *schema.MIGRATIONS,
        schema.Migration(schema.LATEST + 1, "a column", "ALTER TABLE hosts ADD COLUMN note TEXT;"),
        schema.Migration(schema.LATEST + 2, "an index", "CREATE INDEX hosts_note ON hosts(note);"),
    )
    conn = db.connect(_v010_db(tmp_path / "state.db"))
    assert db.migrate(conn, migrations=extra) == schema.LATEST + 2
    assert db.migrate(conn, migrations=extra) == schema.LATEST + 2  # again: nothing re-applied (would fail)
    assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(hosts)")}


def test_failed_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    bad = (
        *schema.MIGRATIONS,
        schema.Migration(schema.LATEST + 1, "ok", "ALTER TABLE hosts ADD COLUMN note TEXT;"),
        schema.Migration(schema.LATEST + 2, "broken", "ALTER TABLE nosuch ADD COLUMN x TEXT;"),
    )
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(conn, migrations=bad)
    assert db.user_version(conn) == schema.LATEST
    assert "note" not in {r[1] for r in conn.execute("PRAGMA table_info(hosts)")}


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    with pytest.raises(StateSchemaTooNew) as err:
        db.connect(tmp_path / "state.db")
    assert err.value.code == "STATE_SCHEMA_TOO_NEW" and err.value.details["version"] == schema.LATEST + 1


#: A slow migration (the others open the database meanwhile) that fails if applied twice (duplicate column).
ADD_NOTE = schema.Migration(
    schema.LATEST + 1,
    "a slow table, then a column",
    "CREATE TABLE filler AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000)"
    " SELECT x FROM c;\nALTER TABLE hosts ADD COLUMN note TEXT;",
)


def _open(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.queues.Queue[str]) -> None:
    """Child: wait for the start signal, open the database and apply ADD_NOTE too; report the version or the error."""
    start.wait()
    try:
        conn = db.connect(Path(path), (*schema.MIGRATIONS, ADD_NOTE))
        out.put(f"ok {db.user_version(conn)}")
    except Exception as exc:  # reported to the parent, which asserts
        out.put(f"error {exc!r}")


def test_processes_opening_a_fresh_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    path = str(tmp_path / "state.db")
    procs = [ctx.Process(target=_open, args=(path, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == [f"ok {schema.LATEST + 1}"] * len(procs)  # each migration ran once, in one process
    conn = sqlite3.connect(path)  # db.connect would refuse it: newer than this code's schema
    assert db.user_version(conn) == schema.LATEST + 1
    assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(hosts)")}
