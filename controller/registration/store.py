"""The ``registrations`` table: which VMs have an agent, where to reach it, its certificate, and the quiescer.

A VM registered with ``--quiescer qga`` has no vmbackup agent: its agent/SSH endpoint fields are empty ("", 0) and
its cert_serial is "".

Other layers read it through :func:`get_registration`::

    reg = get_registration(conn, vm_uuid)
    if reg is None: ...                      # not registered
    reg.agent_host, reg.agent_port           # where the agent listens (as seen from the controller)
    reg.quiescer                             # "agent" | "qga" | "none" (controller/backup/quiescers.py)
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from controller import db

_COLUMNS = (
    "vm_uuid",
    "vm_name",
    "host_uri",
    "agent_host",
    "agent_port",
    "ssh_host",
    "ssh_port",
    "ssh_user",
    "ssh_key",
    "agent_version",
    "cert_serial",
    "registered_at",
    "quiescer",
)


@dataclass(frozen=True)
class Registration:
    """One registered VM: agent endpoint, the SSH endpoint used to install it, certificate serial."""

    vm_uuid: str
    vm_name: str
    host_uri: str
    agent_host: str
    agent_port: int
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: str | None
    agent_version: str
    cert_serial: str
    registered_at: str
    #: how backups freeze the guest: "agent" (vmbackup agent), "qga" (QEMU guest agent via libvirt), "none" (CRASH)
    quiescer: str = "agent"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _from_row(row: sqlite3.Row) -> Registration:
    """Build a Registration from a table row."""
    return Registration(
        vm_uuid=row["vm_uuid"],
        vm_name=row["vm_name"],
        host_uri=row["host_uri"],
        agent_host=row["agent_host"],
        agent_port=int(row["agent_port"]),
        ssh_host=row["ssh_host"],
        ssh_port=int(row["ssh_port"]),
        ssh_user=row["ssh_user"],
        ssh_key=row["ssh_key"],
        agent_version=row["agent_version"],
        cert_serial=row["cert_serial"],
        registered_at=row["registered_at"],
        quiescer=row["quiescer"],
    )


def get_registration(conn: sqlite3.Connection, vm_uuid: str) -> Registration | None:
    """The registration of one VM, or None."""
    row = conn.execute("SELECT * FROM registrations WHERE vm_uuid = ?", (vm_uuid,)).fetchone()
    return _from_row(row) if row is not None else None


def list_registrations(conn: sqlite3.Connection) -> list[Registration]:
    """Every registration, by VM name."""
    rows = conn.execute("SELECT * FROM registrations ORDER BY vm_name, vm_uuid").fetchall()
    return [_from_row(r) for r in rows]


def save(conn: sqlite3.Connection, reg: Registration) -> None:
    """Insert or replace the registration of ``reg.vm_uuid``."""
    placeholders = ", ".join("?" for _ in _COLUMNS)
    values = tuple(getattr(reg, c) for c in _COLUMNS)
    with db.transaction(conn):
        conn.execute(
            f"INSERT OR REPLACE INTO registrations ({', '.join(_COLUMNS)}) VALUES ({placeholders})", values
        )


def delete(conn: sqlite3.Connection, vm_uuid: str) -> bool:
    """Remove a VM's registration; True if there was one."""
    with db.transaction(conn):
        cur = conn.execute("DELETE FROM registrations WHERE vm_uuid = ?", (vm_uuid,))
    return cur.rowcount > 0
