"""`vmbackup prune`: apply each protected VM's retention to its points in the vault (a prune job per VM).

VMs without a protection row, or unprotected with --retain-data, are never pruned. The protection is re-read
inside the job (which holds the VM's operation lock), so an unprotect racing with a prune wins. A pruned point that
a kept incremental is built on is merged into its child (``Verdict.merge_into``; retention.execution_order), and
the job first finishes merges a crash interrupted (merge.resume_merges). Protected points (controller/vault/protect.py)
and every point they are built on are kept; the job first brings the policy's ``protect_newest`` records up to date
(``protect.sync_policy``), which a dry run only shows. Usage::

    reports = prune(settings, vm=None, dry_run=True)     # or prune(state, ...): borrows an open State
    for r in reports: print(r.vm_name, r.skipped or [v.point.id for v in r.selection.prune])
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from controller.jobs.store import JobStore, VmRef
from controller.policies import store
from controller.policies.model import Policy
from controller.scheduling.exceptions import PruneFailed
from controller.scheduling.retention import PointRecord, Selection, execution_order, select_prunable
from controller.settings import Settings
from controller.state import State, using
from controller.vault import RecoveryPoint, Vault, pins, protect
from controller.vault.exceptions import VaultError
from controller.vault.merge import resume_merges
from controller.vault.verdicts import boot_checked_ok, verified_ok


@dataclass
class PruneReport:
    """The outcome for one VM."""

    vm_uuid: str
    vm_name: str
    policy: str | None
    selection: Selection | None = None
    skipped: str = ""
    job_id: str | None = None
    deleted: list[str] = field(default_factory=list)  # every point removed (plain deletes and merges)
    merged: dict[str, str] = field(default_factory=dict)  # point id -> the child it was merged into
    soft_deleted: list[str] = field(default_factory=list)  # the deleted points only soft-deleted (recycle.py)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        sel = self.selection
        return {
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "policy": self.policy,
            "skipped": self.skipped,
            "job_id": self.job_id,
            "dry_run": self.dry_run,
            "deleted": self.deleted,
            "merged": self.merged,
            "soft_deleted": self.soft_deleted,
            "keep": [v.to_dict() for v in sel.keep] if sel else [],
            "prune": [
                {**v.to_dict(), "action": "merge" if v.merge_into else "delete"} for v in (sel.prune if sel else [])
            ],
        }


def record_of(p: RecoveryPoint) -> PointRecord:
    """The retention view of a vault point (created: manifest ISO time, naive taken as UTC; recorded verdicts)."""
    created = getattr(p, "created", None)
    if not isinstance(created, datetime):
        created = datetime.fromisoformat(p.manifest.created)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return PointRecord(
        p.point_id,
        created,
        p.manifest.consistency,
        ref=p,
        verified=verified_ok(p.manifest),
        boot_checked=boot_checked_ok(p.manifest),
        parent=p.manifest.parent,
        pinned_by=tuple(pins.holders(p.path.parent.parent, p.vm_uuid, p.point_id)),
    )


def _by_vm(vault: Vault, vm: str | None) -> dict[str, list[RecoveryPoint]]:
    """Vault points grouped by VM uuid, optionally only the VM named (uuid or name)."""
    out: dict[str, list[RecoveryPoint]] = {}
    for p in vault.list_points():
        if vm is None or vm.lower() == p.vm_uuid or vm == p.vm_name:
            out.setdefault(p.vm_uuid, []).append(p)
    return out


def plan_vm(
    conn: sqlite3.Connection, vm_uuid: str, points: list[RecoveryPoint], now: datetime
) -> tuple[PruneReport, Policy | None]:
    """What retention would do for one VM (nothing is changed)."""
    name = points[0].vm_name if points else vm_uuid
    prot = store.get_protection(conn, vm_uuid)
    if prot is None:
        return PruneReport(vm_uuid, name, None, skipped="not protected: no retention applies"), None
    if not prot.active:
        return PruneReport(
            vm_uuid, name, prot.policy, skipped="unprotected (data retained): never pruned"
        ), None
    policy = store.get_policy(conn, prot.policy).policy
    why = protections(points, policy)
    sel = select_prunable(
        [replace(record_of(p), protected_by=why.get(p.point_id, ())) for p in points],
        policy.retention,
        now,
        tz=ZoneInfo(policy.schedule.timezone),
    )
    return PruneReport(vm_uuid, name, policy.name, selection=sel), policy


def protections(points: list[RecoveryPoint], policy: Policy) -> dict[str, tuple[str, ...]]:
    """point id -> why it is protected directly: its user records (an unreadable one too), and the policy's
    protect_newest as the job applies it (protect.sync_policy), stale policy records aside."""
    if not points:
        return {}
    root, vm_uuid = points[0].path.parent.parent, points[0].vm_uuid
    out = {
        pid: [r.describe() for r in recs if r.holder != "policy"]
        for pid, recs in protect.records(root, vm_uuid).items()
    }
    n = policy.protect_newest
    for p in protect.newest_good(points, n):
        out.setdefault(p.point_id, []).append(f"protected (policy {policy.name}): {protect.policy_reason(n)}")
    return {pid: tuple(why) for pid, why in out.items() if why}


def prune(
    source: Settings | State,
    vm: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    conn: sqlite3.Connection | None = None,
) -> list[PruneReport]:
    """Apply retention to every VM in the vault (or one); returns a report per VM (conn: use that DB connection)."""
    with using(source) as st:
        conn = conn or st.db
        vault = st.vault
        now = now or datetime.now(UTC)
        reports = []
        for vm_uuid, points in sorted(_by_vm(vault, vm).items()):
            report, policy = plan_vm(conn, vm_uuid, points, now)
            report.dry_run = dry_run
            if policy is not None and not dry_run:
                _run_job(conn, vault, report, st.settings, now)
            reports.append(report)
        return reports


def _run_job(conn: sqlite3.Connection, vault: Vault, report: PruneReport, settings: Settings, now: datetime) -> None:
    """The prune job of one VM: finish interrupted merges, re-plan under the VM lock, then delete (or merge into
    their child) the prunable points."""
    jobs = JobStore(conn)
    job = jobs.create("prune", vm=VmRef(report.vm_uuid, report.vm_name, settings.uri))
    report.job_id = job.id
    with jobs.run(job.id) as run:
        with run.phase("plan"):
            resumed = resume_merges(vault, report.vm_uuid)
            if resumed:
                run.detail("resumed_merges", {o.point_id: o.into for o in resumed})
            fresh, policy = plan_vm(conn, report.vm_uuid, vault.list_points(report.vm_uuid), now)
            if policy is not None:
                added, dropped = protect.sync_policy(vault, report.vm_uuid, policy.name, policy.protect_newest)
                run.detail("protect_newest", {"protected": added, "unprotected": dropped})
            report.selection, report.skipped = fresh.selection, fresh.skipped
            run.detail("policy", report.policy)
        if policy is None or report.selection is None:
            run.detail("skipped", report.skipped)
            return
        with run.phase("delete"):
            for v in execution_order(report.selection.prune):
                try:
                    # soft_delete_days > 0: only soft-deleted (recycle.py), purged (merged, if need be) later
                    out = vault.delete_point(v.point.ref, settings.soft_delete_days, by="prune")
                except (VaultError, OSError) as e:
                    raise PruneFailed(f"deleting point {v.point.id} of {report.vm_name} failed: {e}") from e
                report.deleted.append(v.point.id)
                if out.into is not None:
                    report.merged[v.point.id] = out.into
                if out.action == "soft-deleted":
                    report.soft_deleted.append(v.point.id)
                run.check_cancelled()
        run.detail("deleted", report.deleted)
        run.detail("merged", report.merged)
        run.detail("soft_deleted", report.soft_deleted)
        run.detail("kept", [v.point.id for v in report.selection.keep])
