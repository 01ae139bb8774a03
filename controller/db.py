"""The controller's embedded SQLite state database (WAL), shared by every layer.

The schema of every layer lives in one place, :mod:`controller.schema`, as numbered migrations; :func:`connect`
brings the database to :data:`controller.schema.LATEST` (``PRAGMA user_version``) before returning. Usage::

    from controller import db
    conn = db.connect(settings.db_path)           # WAL, foreign keys, 30 s busy timeout, schema up to date
    with db.transaction(conn):                    # BEGIN IMMEDIATE ... COMMIT
        ...

Commands do not call :func:`connect` themselves: they open :func:`controller.state.open_state`, which holds one
connection for the command and closes it. Several processes (the CLI and ``vmbackup serve``) open the same file;
anything that must be exclusive across processes is enforced with a table constraint inside a ``BEGIN IMMEDIATE``
transaction, never in memory.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from controller import schema
from controller.exceptions import StateSchemaTooNew

#: tries to open the database when a concurrent opener holds it locked (see connect)
_OPEN_ATTEMPTS = 20


def connect(path: Path, migrations: Sequence[schema.Migration] = schema.MIGRATIONS) -> sqlite3.Connection:
    """Open the state database, creating it if needed and applying the schema migrations it lacks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(_OPEN_ATTEMPTS):
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn, path, migrations)
            return conn
        except sqlite3.OperationalError as e:
            conn.close()
            # several processes opening a brand-new file at once: switching it to WAL can fail at once with
            # "database is locked" (SQLite does not always wait in its busy handler there); try again shortly
            if "locked" not in str(e) or attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
        except BaseException:
            conn.close()
            raise
    raise AssertionError("unreachable")  # the loop returns or raises


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0: new, or made by 0.1.0 which never set it)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection, path: Path | str = "", migrations: Sequence[schema.Migration] = schema.MIGRATIONS
) -> int:
    """Apply the migrations after the database's version, in one BEGIN IMMEDIATE transaction; returns the version.

    Under the write lock the version is read again, so of two processes opening a fresh database at once the
    second finds the work done. A database newer than `migrations` raises :class:`StateSchemaTooNew`.
    """
    latest = migrations[-1].version if migrations else 0
    if user_version(conn) == latest:
        return latest
    with transaction(conn):
        version = user_version(conn)
        if version > latest:
            raise StateSchemaTooNew(
                f"state database {path} has schema version {version}; this vmbackup knows up to {latest}",
                details={"path": str(path), "version": version, "latest": latest},
            )
        for m in migrations:
            if m.version > version:
                for stmt in m.statements():
                    conn.execute(stmt)
                version = m.version
        conn.execute(f"PRAGMA user_version = {int(version)}")
    return version


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken first, so check-then-write is atomic."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
