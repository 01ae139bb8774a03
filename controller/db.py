"""The controller's embedded SQLite state database (WAL), shared by every layer.

Each layer owns its tables and declares them with :func:`register_schema` at import time; :func:`connect`
creates whatever is missing. Usage::

    from controller import db
    db.register_schema("jobs", JOBS_DDL)          # in controller/jobs/store.py, at module level
    conn = db.connect(settings.db_path)           # WAL, foreign keys, 30 s busy timeout

Several processes (the CLI and ``vmbackup serve``) open the same file; anything that must be exclusive across
processes is enforced with a table constraint inside a ``BEGIN IMMEDIATE`` transaction, never in memory.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMAS: dict[str, str] = {}
_lock = threading.Lock()


def register_schema(owner: str, ddl: str) -> None:
    """Declare a layer's tables (idempotent DDL: CREATE TABLE IF NOT EXISTS ...)."""
    with _lock:
        _SCHEMAS[owner] = ddl


def connect(path: Path) -> sqlite3.Connection:
    """Open the state database, creating it and every registered schema if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    with _lock:
        schemas = list(_SCHEMAS.values())
    for ddl in schemas:
        conn.executescript(ddl)
    return conn


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
