"""The ``policies`` and ``protections`` tables (owner: policies/).

``policies`` keeps each policy's YAML text and its parsed JSON; ``protections`` binds a VM to at most one
policy (``vm_uuid`` is the primary key). Usage::

    save_policy(conn, policy, yaml_text)               # PolicyExists unless replace=True
    prev = bind(conn, vm_uuid, "web1", "gold")         # the replaced binding (or None); PolicyNotFound
    set_retain(conn, vm_uuid)                          # unprotect --retain-data: schedule stops, points kept
    delete_policy(conn, "gold")                        # PolicyInUse while a VM is protected by it
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from controller import db
from controller.policies.exceptions import NotProtected, PolicyExists, PolicyInUse, PolicyNotFound
from controller.policies.model import Policy

PROTECTED = "protected"
RETAINED = "unprotected-retain"


def now_iso() -> str:
    """The current UTC time, ISO 8601 (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredPolicy:
    """A policy as stored: parsed, plus its YAML text and timestamps."""

    policy: Policy
    yaml: str
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            **self.policy.to_dict(),
            "yaml": self.yaml,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Protection(NamedTuple):
    """One VM's binding to a policy (a named tuple: the dashboard makes one per VM, 10,000 at a time, and a
    frozen dataclass costs twice as much to build)."""

    vm_uuid: str
    vm_name: str
    policy: str
    state: str
    since: str

    @property
    def active(self) -> bool:
        """True while the schedule runs (state protected)."""
        return self.state == PROTECTED

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return self._asdict()


def _stored(row: sqlite3.Row) -> StoredPolicy:
    """A StoredPolicy from a row."""
    return StoredPolicy(
        Policy.from_dict(json.loads(row["parsed_json"])), row["yaml"], row["created_at"], row["updated_at"]
    )


def _protection(row: sqlite3.Row) -> Protection:
    """A Protection from a row."""
    return Protection(row["vm_uuid"], row["vm_name"], row["policy"], row["state"], row["since"])


def save_policy(conn: sqlite3.Connection, policy: Policy, yaml_text: str, replace: bool = False) -> bool:
    """Insert (or with replace, update) a policy; True if it replaced an existing one."""
    now = now_iso()
    with db.transaction(conn):
        old = conn.execute("SELECT created_at FROM policies WHERE name = ?", (policy.name,)).fetchone()
        if old is not None and not replace:
            raise PolicyExists(f"policy {policy.name!r} already exists")
        created = old["created_at"] if old is not None else now
        conn.execute(
            "INSERT OR REPLACE INTO policies (name, yaml, parsed_json, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (policy.name, yaml_text, json.dumps(policy.to_dict(), sort_keys=True), created, now),
        )
    return old is not None


def get_policy(conn: sqlite3.Connection, name: str) -> StoredPolicy:
    """One policy by name; PolicyNotFound if absent."""
    row = conn.execute("SELECT * FROM policies WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise PolicyNotFound(f"no policy named {name!r}")
    return _stored(row)


def list_policies(conn: sqlite3.Connection) -> list[StoredPolicy]:
    """Every policy, by name."""
    return [_stored(r) for r in conn.execute("SELECT * FROM policies ORDER BY name").fetchall()]


def delete_policy(conn: sqlite3.Connection, name: str) -> None:
    """Delete a policy; refused (PolicyInUse) while any VM is actively protected by it."""
    with db.transaction(conn):
        if conn.execute("SELECT 1 FROM policies WHERE name = ?", (name,)).fetchone() is None:
            raise PolicyNotFound(f"no policy named {name!r}")
        users = conn.execute(
            "SELECT vm_uuid, vm_name FROM protections WHERE policy = ? AND state = ? ORDER BY vm_name",
            (name, PROTECTED),
        ).fetchall()
        if users:
            names = ", ".join(r["vm_name"] or r["vm_uuid"] for r in users)
            raise PolicyInUse(
                f"policy {name!r} protects {len(users)} VM(s): {names}",
                details={"vms": [r["vm_uuid"] for r in users]},
            )
        conn.execute("DELETE FROM policies WHERE name = ?", (name,))


def get_protection(conn: sqlite3.Connection, vm_uuid: str) -> Protection | None:
    """A VM's protection row, or None."""
    row = conn.execute("SELECT * FROM protections WHERE vm_uuid = ?", (vm_uuid,)).fetchone()
    return _protection(row) if row is not None else None


def list_protections(
    conn: sqlite3.Connection, policy: str | None = None, state: str | None = None
) -> list[Protection]:
    """Protection rows, optionally of one policy and/or state, by VM name."""
    sql, args = "SELECT * FROM protections WHERE 1=1", list[str]()
    if policy is not None:
        sql, args = sql + " AND policy = ?", [*args, policy]
    if state is not None:
        sql, args = sql + " AND state = ?", [*args, state]
    return [_protection(r) for r in conn.execute(sql + " ORDER BY vm_name, vm_uuid", args).fetchall()]


def bind(conn: sqlite3.Connection, vm_uuid: str, vm_name: str, policy: str) -> Protection | None:
    """Bind a VM to a policy (state protected), replacing any earlier binding; returns the replaced one."""
    with db.transaction(conn):
        if conn.execute("SELECT 1 FROM policies WHERE name = ?", (policy,)).fetchone() is None:
            raise PolicyNotFound(f"no policy named {policy!r}")
        row = conn.execute("SELECT * FROM protections WHERE vm_uuid = ?", (vm_uuid,)).fetchone()
        prev = _protection(row) if row is not None else None
        conn.execute(
            "INSERT OR REPLACE INTO protections (vm_uuid, policy, state, since, vm_name) "
            "VALUES (?, ?, ?, ?, ?)",
            (vm_uuid, policy, PROTECTED, now_iso(), vm_name),
        )
    return prev


def set_retain(conn: sqlite3.Connection, vm_uuid: str) -> Protection:
    """Stop a VM's schedule but keep its row as unprotected-retain (retention never touches its points)."""
    with db.transaction(conn):
        cur = conn.execute(
            "UPDATE protections SET state = ?, since = ? WHERE vm_uuid = ?", (RETAINED, now_iso(), vm_uuid)
        )
        if cur.rowcount == 0:
            raise NotProtected(f"VM {vm_uuid} is not protected")
        row = conn.execute("SELECT * FROM protections WHERE vm_uuid = ?", (vm_uuid,)).fetchone()
    return _protection(row)


def remove_protection(conn: sqlite3.Connection, vm_uuid: str) -> bool:
    """Delete a VM's protection row; True if there was one."""
    with db.transaction(conn):
        cur = conn.execute("DELETE FROM protections WHERE vm_uuid = ?", (vm_uuid,))
    return cur.rowcount > 0


def status_text(prot: Protection | None, point_count: int) -> str:
    """The user-facing protection status of a VM."""
    if prot is None:
        return "Unprotected"
    if not prot.active:
        return "Unprotected (data retained)"
    return "Protected" if point_count else "Protected (initial backup pending)"
