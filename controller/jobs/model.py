"""What a job record looks like: the VM it concerns, its phases, and the job itself (plain dataclasses)."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.errors import InvalidArgument

JOB_TYPES = (
    "discover",
    "register",
    "unregister",
    "configure-protection",
    "backup",
    "restore",
    "boot-check",
    "stop-protection",
    "prune",
    "verify",
    "recover",
)
JOB_STATES = ("queued", "in-progress", "completed", "failed", "cancelled")
ACTIVE_STATES = ("queued", "in-progress")

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def utcnow() -> str:
    """The current UTC time as ISO 8601 with microseconds (sorts lexicographically)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def parse_time(value: str | None) -> datetime | None:
    """Parse a stored timestamp (None stays None)."""
    return datetime.fromisoformat(value) if value else None


def parse_duration(text: str) -> timedelta:
    """'30m', '24h', '7d', '2w', '90s' -> timedelta; anything else is INVALID_ARGUMENT."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidArgument(f"cannot read duration {text!r}: use a number and a unit s/m/h/d/w, e.g. 24h or 7d")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


@dataclass(frozen=True)
class VmRef:
    """The VM a job concerns: libvirt UUID, name at the time, and the libvirt URI of its host."""

    uuid: str
    name: str
    host_uri: str


@dataclass
class Phase:
    """One named step of a job with its timing and bytes."""

    name: str
    state: str  # running | completed | failed | cancelled
    started_at: str
    ended_at: str | None = None
    duration_s: float | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


@dataclass
class Job:
    """One operation as recorded in the state database."""

    id: str
    type: str
    state: str
    created_at: str
    vm: VmRef | None = None
    host_uri: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    bytes_total: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    owner_pid: int | None = None
    owner_start: str | None = None
    lock_key: str | None = None
    cancel_requested: bool = False
    phases: list[Phase] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Queued or in progress."""
        return self.state in ACTIVE_STATES

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end (or to now while running); None if never started."""
        start = parse_time(self.started_at)
        if start is None:
            return None
        end = parse_time(self.ended_at) or datetime.now(UTC)
        return round((end - start).total_seconds(), 3)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what `vmbackup job show --json` prints)."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "vm": dict(self.vm.__dict__) if self.vm else None,
            "host_uri": self.host_uri,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "bytes_total": self.bytes_total,
            "details": self.details,
            "error": self.error,
            "owner_pid": self.owner_pid,
            "cancel_requested": self.cancel_requested,
            "phases": [p.to_dict() for p in self.phases],
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row, phases: list[Phase]) -> Job:
        """Build a Job from a `jobs` row and its phases."""
        vm = VmRef(row["vm_uuid"], row["vm_name"] or "", row["host_uri"] or "") if row["vm_uuid"] else None
        error = None
        if row["error_code"]:
            error = {
                "code": row["error_code"],
                "message": row["error_message"],
                "remediation": row["error_remediation"],
            }
        return cls(
            id=row["id"],
            type=row["type"],
            state=row["state"],
            created_at=row["created_at"],
            vm=vm,
            host_uri=row["host_uri"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            bytes_total=int(row["bytes_total"] or 0),
            details=json.loads(row["details_json"] or "{}"),
            error=error,
            owner_pid=row["owner_pid"],
            owner_start=row["owner_start"],
            lock_key=row["lock_key"],
            cancel_requested=bool(row["cancel_requested"]),
            phases=phases,
        )


def phase_from_row(row: sqlite3.Row) -> Phase:
    """Build a Phase from a `job_phases` row."""
    return Phase(
        name=row["name"],
        state=row["state"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        duration_s=row["duration_s"],
        bytes=row["bytes"],
    )
