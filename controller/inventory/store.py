"""The VM inventory (the `vms` table): what discovery saw on each host, including VMs that are gone.

Usage::

    record_host(conn, uri, seen)                 # upsert seen VMs, mark the host's others gone -> (new, gone)
    vms = list_vms(conn, state="running", host_uri=uri)
    vm = find_vm(conn, "web1")                   # by name or UUID, or None

Gone VMs are never deleted: their recovery points stay listed under their UUID. ``registered`` and
``protected`` come from the `registrations` and `protections` tables (owned by other layers).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from controller import db
from controller.jobs.model import utcnow


@dataclass
class DiskInfo:
    """One disk of a VM: target, image path and format, virtual and allocated size in bytes."""

    target: str
    path: str
    format: str
    virtual_size: int | None = None
    allocated: int | None = None
    physical: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


@dataclass
class VmInfo:
    """One VM of the inventory."""

    uuid: str
    name: str
    host_uri: str
    state: str  # running, shutoff, paused, ... or gone
    disks: list[DiskInfo] = field(default_factory=list)
    gone: bool = False
    first_seen: str | None = None
    last_seen: str | None = None
    registered: bool = False
    protected: bool = False
    policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what `vmbackup vms --json` prints)."""
        out = dict(self.__dict__)
        out["disks"] = [d.to_dict() for d in self.disks]
        return out


#: vms with registered/protected/policy from the `registrations` and `protections` tables (controller/schema.py).
_SELECT = (
    "SELECT v.*, r.vm_uuid IS NOT NULL AS registered, COALESCE(p.state = 'protected', 0) AS protected,"
    " p.policy AS policy FROM vms v"
    " LEFT JOIN registrations r ON r.vm_uuid = v.uuid LEFT JOIN protections p ON p.vm_uuid = v.uuid"
)


def _from_row(row: sqlite3.Row) -> VmInfo:
    """Build a VmInfo from a joined row."""
    return VmInfo(
        uuid=row["uuid"],
        name=row["name"],
        host_uri=row["host_uri"],
        state=row["state"],
        disks=[DiskInfo(**d) for d in json.loads(row["disks_json"] or "[]")],
        gone=bool(row["gone"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        registered=bool(row["registered"]),
        protected=bool(row["protected"]),
        policy=row["policy"],
    )


def list_vms(
    conn: sqlite3.Connection, state: str | None = None, host_uri: str | None = None, include_gone: bool = True
) -> list[VmInfo]:
    """The inventory ordered by host and name; state 'gone' selects the gone VMs."""
    where, params = ["1 = 1"], []
    if state is not None:
        where.append("v.state = ?")
        params.append(state)
    if host_uri is not None:
        where.append("v.host_uri = ?")
        params.append(host_uri)
    if not include_gone:
        where.append("v.gone = 0")
    sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY v.host_uri, v.name, v.uuid"
    return [_from_row(r) for r in conn.execute(sql, params)]


def find_vm(conn: sqlite3.Connection, name_or_uuid: str) -> VmInfo | None:
    """One VM by UUID, else by name (a present VM wins over a gone one of the same name)."""
    sql = f"{_SELECT} WHERE v.uuid = ? OR v.name = ? ORDER BY v.uuid = ? DESC, v.gone, v.last_seen DESC"
    row = conn.execute(sql, (name_or_uuid, name_or_uuid, name_or_uuid)).fetchone()
    return _from_row(row) if row else None


def record_host(conn: sqlite3.Connection, host_uri: str, seen: list[VmInfo]) -> tuple[list[str], list[str]]:
    """Upsert the VMs seen on a host, mark its other VMs gone (atomically); returns (new, gone) uuids."""
    now = utcnow()
    with db.transaction(conn):
        known = {r["uuid"] for r in conn.execute("SELECT uuid FROM vms")}
        for vm in seen:
            conn.execute(
                "INSERT INTO vms (uuid, name, host_uri, state, disks_json, first_seen, last_seen, gone)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT(uuid) DO UPDATE SET name = excluded.name,"
                " host_uri = excluded.host_uri, state = excluded.state, disks_json = excluded.disks_json,"
                " last_seen = excluded.last_seen, gone = 0",
                (vm.uuid, vm.name, host_uri, vm.state, json.dumps([d.to_dict() for d in vm.disks]), now, now),
            )
        seen_ids = [vm.uuid for vm in seen]
        marks = ",".join("?" * len(seen_ids)) or "''"
        gone = [
            r["uuid"]
            for r in conn.execute(
                f"SELECT uuid FROM vms WHERE host_uri = ? AND gone = 0 AND uuid NOT IN ({marks})",
                (host_uri, *seen_ids),
            )
        ]
        conn.executemany("UPDATE vms SET gone = 1, state = 'gone' WHERE uuid = ?", [(u,) for u in gone])
    new = [u for u in seen_ids if u not in known]
    return new, gone
