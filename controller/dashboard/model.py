"""Building the dashboard snapshot (see the package docstring for the JSON shape and the attention rules)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.dashboard.exceptions import DashboardError
from controller.jobs.model import parse_time
from controller.jobs.store import Job, JobStore
from controller.policies.exceptions import PolicyNotFound
from controller.policies.model import Policy
from controller.policies.store import PROTECTED, RETAINED, Protection, get_policy, list_protections
from controller.registration.store import list_registrations
from controller.scheduling.schedule import next_run
from controller.settings import Settings
from controller.state import State, using
from controller.vault import RecoveryPoint, Vault

#: How long after its slot a backup may take before the VM counts as overdue.
DEFAULT_GRACE = timedelta(minutes=10)
#: Job states as the dashboard counts them.
STATE_BUCKETS = {
    "completed": "succeeded",
    "failed": "failed",
    "in-progress": "in_progress",
    "queued": "in_progress",
    "cancelled": "cancelled",
}


@dataclass
class VmRow:
    """One VM's line: protection, newest point, last backup job, next run, what needs attention."""

    vm_uuid: str
    vm_name: str
    registered: bool = False
    protection: str | None = None
    policy: str | None = None
    schedule: str | None = None
    last_point: dict[str, Any] | None = None
    points: int = 0
    last_backup: dict[str, Any] | None = None
    next_run: str | None = None
    attention: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return dict(self.__dict__)


@dataclass
class Dashboard:
    """The whole snapshot."""

    generated_at: str
    vms: dict[str, int]
    jobs_24h: dict[str, Any]
    vault: dict[str, Any]
    rows: list[VmRow]

    @property
    def attention(self) -> list[dict[str, Any]]:
        """The VMs that need a look, with why."""
        return [{"vm_uuid": r.vm_uuid, "vm_name": r.vm_name, "reasons": r.attention} for r in self.rows if r.attention]

    def to_dict(self) -> dict[str, Any]:
        """What `vmbackup dashboard --json` prints."""
        return {
            "generated_at": self.generated_at,
            "vms": self.vms,
            "jobs_24h": self.jobs_24h,
            "vault": self.vault,
            "rows": [r.to_dict() for r in self.rows],
            "attention": self.attention,
        }


def build(
    source: Settings | State,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
    conn: sqlite3.Connection | None = None,
) -> Dashboard:
    """Assemble the dashboard from state.db and the vault named by the settings (conn: use that DB connection)."""
    now = now or datetime.now(UTC)
    with using(source) as st:
        try:
            return _build(st.settings, conn or st.db, now, grace)
        except sqlite3.Error as e:
            raise DashboardError(f"cannot open or read the state database {st.settings.db_path}: {e}") from e


def _build(settings: Settings, conn: sqlite3.Connection, now: datetime, grace: timedelta) -> Dashboard:
    """The body of build, on an open connection."""
    jobs = JobStore(conn)
    vault = Vault(settings.vault)
    points = vault.list_points()
    regs = {r.vm_uuid: r for r in list_registrations(conn)}
    prots = {p.vm_uuid: p for p in list_protections(conn)}
    by_vm: dict[str, list[RecoveryPoint]] = {}
    for p in points:
        by_vm.setdefault(p.vm_uuid, []).append(p)  # newest first, as list_points returns them
    names = {u: p[0].vm_name for u, p in by_vm.items()}
    names.update({u: p.vm_name for u, p in prots.items() if p.vm_name})
    names.update({u: r.vm_name for u, r in regs.items()})
    policies: dict[str, Policy | None] = {}
    last_backups = jobs.latest_per_vm("backup")
    rows = []
    for uuid in sorted(names, key=lambda u: (names[u], u)):
        row = VmRow(uuid, names[uuid], registered=uuid in regs, points=len(by_vm.get(uuid, [])))
        newest = by_vm.get(uuid, [None])[0]
        row.last_point = _point_view(newest, now) if newest else None
        row.last_backup = _job_view(last_backups.get(uuid))
        _protection(conn, row, prots.get(uuid), policies, newest, now, grace)
        if row.last_backup and row.last_backup["state"] == "failed":
            row.attention.insert(0, f"last backup failed: {row.last_backup['error_code']}")
        rows.append(row)
    return Dashboard(
        generated_at=now.isoformat(timespec="seconds"),
        vms=_vm_counts(conn, regs, prots, names),
        jobs_24h=_job_counts(jobs, now),
        vault=_vault_view(vault, len(points)),
        rows=rows,
    )


def _protection(
    conn: sqlite3.Connection,
    row: VmRow,
    prot: Protection | None,
    policies: dict[str, Policy | None],
    newest: RecoveryPoint | None,
    now: datetime,
    grace: timedelta,
) -> None:
    """Fill the protection columns of a row and flag it overdue when its schedule allows no point this old."""
    if prot is None:
        return
    row.protection, row.policy = prot.state, prot.policy
    if prot.policy not in policies:
        try:
            policies[prot.policy] = get_policy(conn, prot.policy).policy
        except PolicyNotFound:
            policies[prot.policy] = None
    pol = policies[prot.policy]
    if pol is None:
        row.attention.append(f"policy {prot.policy!r} no longer exists")
        return
    row.schedule = pol.schedule.describe()
    if not prot.active:
        return
    anchor = _aware(parse_time(prot.since)) or now
    if newest is not None:
        anchor = max(anchor, _aware(datetime.fromisoformat(newest.manifest.created)) or anchor)
    last_job = parse_time(row.last_backup["created_at"]) if row.last_backup else None
    row.next_run = next_run(pol.schedule, max(anchor, _aware(last_job) or anchor)).isoformat(timespec="seconds")
    slot = next_run(pol.schedule, anchor)
    if slot + grace < now:
        late = _age_text((now - slot).total_seconds())
        what = "no recovery point yet" if newest is None else "newest point is older than the schedule allows"
        row.attention.append(f"overdue: {what} (slot {slot.isoformat(timespec='minutes')} missed by {late})")


def _point_view(p: RecoveryPoint, now: datetime) -> dict[str, Any]:
    """A point's id, time, age, consistency and boot-check verdict."""
    created = _aware(datetime.fromisoformat(p.manifest.created)) or now
    bc = p.manifest.boot_check
    return {
        "point_id": p.point_id,
        "created": p.manifest.created,
        "age_s": round((now - created).total_seconds(), 1),
        "consistency": p.manifest.consistency,
        "boot_check": None
        if not bc
        else {"passed": bc.get("passed"), "checked_at": bc.get("checked_at"), "reason": bc.get("reason", "")},
    }


def _job_view(j: Job | None) -> dict[str, Any] | None:
    """The fields of the last backup job the dashboard shows."""
    if j is None:
        return None
    return {
        "job_id": j.id,
        "state": j.state,
        "created_at": j.created_at,
        "ended_at": j.ended_at,
        "error_code": j.error["code"] if j.error else None,
    }


def _vm_counts(
    conn: sqlite3.Connection, regs: dict[str, Any], prots: dict[str, Protection], names: dict[str, str]
) -> dict[str, int]:
    """known / registered / protected / unprotected (registered, not protected) / retained."""
    from controller.inventory.store import list_vms

    known = {v.uuid for v in list_vms(conn, include_gone=False)} | set(names)
    protected = {u for u, p in prots.items() if p.state == PROTECTED}
    return {
        "known": len(known),
        "registered": len(regs),
        "protected": len(protected),
        "unprotected": len(set(regs) - protected),
        "retained": sum(1 for p in prots.values() if p.state == RETAINED),
    }


def _job_counts(jobs: JobStore, now: datetime) -> dict[str, Any]:
    """Jobs created in the 24 h before now, by state bucket, overall and per type."""
    out: dict[str, Any] = {"succeeded": 0, "failed": 0, "in_progress": 0, "cancelled": 0, "by_type": {}}
    cutoff = now - timedelta(hours=24)
    for j in jobs.list(since=timedelta(hours=24) + (datetime.now(UTC) - now)):
        created = parse_time(j.created_at)
        if created is None or created < cutoff or created > now:
            continue
        bucket = STATE_BUCKETS[j.state]
        out[bucket] += 1
        per = out["by_type"].setdefault(j.type, {"succeeded": 0, "failed": 0, "in_progress": 0, "cancelled": 0})
        per[bucket] += 1
    return out


def _vault_view(vault: Vault, n_points: int) -> dict[str, Any]:
    """Vault path, bytes used (points and partials), free bytes, point count."""
    u = vault.usage()
    return {
        "path": u["vault"],
        "total_bytes": u["total_bytes"],
        "partial_bytes": sum(v["partial_bytes"] for v in u["vms"].values()),
        "free_bytes": u["free_bytes"],
        "points": n_points,
    }


def _aware(t: datetime | None) -> datetime | None:
    """t with UTC assumed when naive."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _age_text(seconds: float) -> str:
    """A short age: 42s, 17m, 5h, 3d."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{int(seconds // n)}{unit}"
    return f"{int(seconds)}s"


def age_text(seconds: float | None) -> str:
    """Public form of the short age text ('-' for None), for renderers."""
    return "-" if seconds is None else _age_text(seconds)
