"""What needs an alert right now, derived from the state DB and the vault alone (no hooks in the engines).

:func:`evaluate` returns the current :class:`Condition` of every enabled event kind; the incident store
(:mod:`controller.notify.incidents`) turns a condition that appears into an incident (one message) and one that
is gone into a resolved incident (re-armed). The rules, per kind (subject = what the incident is about):

- ``job_failed`` (subject ``<vm uuid>/<job type>``; VM-less jobs: ``<lock key or ->/<type>``): the newest finished
  (completed or failed; cancelled ones do not count) job of that type for that VM, created within ``job_lookback``,
  failed. Failures the two kinds below report (CONSISTENCY_NOT_MET, BOOT_CHECK_FAILED) are left to them.
- ``backup_missed`` (subject: vm uuid): a protected VM whose schedule's first slot after its newest recovery point
  (or after protection began, if it has none) passed more than ``missed_grace`` ago, while no backup of it runs.
  So the newest point is older than the schedule allows, and never older than the policy's RPO plus the grace:
  :func:`rpo` is the longest interval between two consecutive slots of the schedule (daily: 24 h; weekly
  mon+thu: 4 d; hourly 4: 4 h; every_minutes 5: 5 min). It is the dashboard's "overdue" rule.
- ``consistency_low`` (vm uuid): a protected VM's newest point is weaker than its policy's ``consistency``.
- ``boot_check_failed`` (vm uuid): the newest boot-checked point of a VM did not pass.
- ``vault_full`` (``vault``): the vault's filesystem is at least ``vault_full_percent`` used (df's Use%); an open
  incident resolves only below that minus 2 points, so a vault hovering at the threshold does not flap.
- ``chain_reset`` (vm uuid): the VM's newest point is a full taken where an incremental was expected, for a reason
  other than the expected ones (first backup, ``--full``, the policy's ``full_every``, raw disks); the point's
  ``full_reason`` is in the message.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.contract import consistency_rank
from controller.notify.config import NotifyConfig
from controller.policies.exceptions import PolicyNotFound
from controller.policies.model import Policy, Schedule, format_duration
from controller.policies.store import PROTECTED, get_policy, list_protections
from controller.scheduling.schedule import next_run
from controller.vault import RecoveryPoint

#: an open vault_full incident stays open down to this many points below the threshold
VAULT_HYSTERESIS = 2.0
SEVERITY = {
    "job_failed": "critical",
    "backup_missed": "critical",
    "consistency_low": "warning",
    "boot_check_failed": "critical",
    "vault_full": "warning",
    "chain_reset": "warning",
}
REMEDIATION = {
    "backup_missed": "Check that `vmbackup serve` runs and look at the VM's jobs: `vmbackup jobs --vm VM`; "
    "`vmbackup backup VM` takes one now.",
    "consistency_low": "Check the VM's quiescer (agent or qemu-guest-agent running, hooks succeeding): the point's "
    "consistency_reason in `vmbackup points VM` says why.",
    "boot_check_failed": "Look at the point's boot-check result (`vmbackup points VM --json`: boot_check.reason and "
    "console_tail); restore from an older point that passed if you need this VM back.",
    "vault_full": "Free space on the vault's filesystem: `vmbackup prune`, fewer points kept in the policies, or a "
    "bigger vault; `vmbackup vault usage` shows space per VM.",
    "chain_reset": "Nothing to do if the reason is expected (the VM was restored, its disks changed); the next "
    "backups are incremental again. A reset on every backup means the checkpoints are lost: check the VM's disks.",
}


@dataclass(frozen=True)
class Condition:
    """One thing that needs attention now: its kind and subject (the dedupe key), and what to tell people."""

    kind: str
    subject: str
    vm_name: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        """critical or warning."""
        return SEVERITY[self.kind]

    @property
    def key(self) -> tuple[str, str]:
        """(kind, subject): one open incident per key."""
        return self.kind, self.subject


def rpo(schedule: Schedule, around: datetime | None = None) -> timedelta:
    """The schedule's recovery point objective: the longest interval between two consecutive slots (~2 weeks)."""
    t = next_run(schedule, around or datetime.now(UTC))
    end, longest = t + timedelta(days=15), timedelta(0)
    for _ in range(16):
        nxt = next_run(schedule, t)
        longest = max(longest, nxt - t)
        t = nxt
        if t > end:
            break
    return longest


def evaluate(
    conn: sqlite3.Connection,
    vault_root: Path,
    points: list[RecoveryPoint],
    cfg: NotifyConfig,
    now: datetime,
    open_keys: Iterable[tuple[str, str]] = (),
) -> list[Condition]:
    """Every current condition of the kinds cfg enables (points: the vault's, newest first)."""
    newest: dict[str, RecoveryPoint] = {}
    for p in points:
        newest.setdefault(p.vm_uuid, p)
    out: list[Condition] = []
    if "job_failed" in cfg.events:
        out += _job_failures(conn, now - cfg.job_lookback)
    if {"backup_missed", "consistency_low"} & set(cfg.events):
        out += [c for c in _protected(conn, newest, cfg, now) if c.kind in cfg.events]
    if "boot_check_failed" in cfg.events:
        out += _boot_checks(points)
    if "chain_reset" in cfg.events:
        out += [c for p in newest.values() if (c := _chain_reset(p)) is not None]
    if "vault_full" in cfg.events:
        hyst = VAULT_HYSTERESIS if ("vault_full", "vault") in set(open_keys) else 0.0
        out += _vault_full(vault_root, cfg.vault_full_percent - hyst, cfg.vault_full_percent)
    return out


def _covered_codes() -> tuple[str, ...]:
    """Error codes whose failure another kind reports (consistency_low, boot_check_failed)."""
    from controller.backup.exceptions import ConsistencyNotMet
    from controller.restore.exceptions import BootCheckFailed

    return ConsistencyNotMet.code, BootCheckFailed.code


def _job_failures(conn: sqlite3.Connection, since: datetime) -> list[Condition]:
    """job_failed: the newest finished job per (VM, type) since `since` failed."""
    rows = conn.execute(
        "SELECT id, type, vm_uuid, vm_name, lock_key, state, created_at, ended_at, error_code, error_message,"
        " error_remediation FROM jobs WHERE state IN ('completed', 'failed') AND created_at >= ?"
        " ORDER BY created_at, id",
        (since.astimezone(UTC).isoformat(timespec="microseconds"),),
    ).fetchall()
    last: dict[str, sqlite3.Row] = {}
    for r in rows:
        last[f"{r['vm_uuid'] or r['lock_key'] or '-'}/{r['type']}"] = r
    covered = _covered_codes()
    out = []
    for subject, r in last.items():
        if r["state"] != "failed" or r["error_code"] in covered:
            continue
        what = f"{r['type']} of {r['vm_name']}" if r["vm_name"] else r["type"]
        out.append(
            Condition(
                "job_failed",
                subject,
                r["vm_name"] or "",
                f"{what} failed: {r['error_code']}: {r['error_message']}",
                {
                    "job_id": r["id"],
                    "job_type": r["type"],
                    "vm_uuid": r["vm_uuid"],
                    "error_code": r["error_code"],
                    "error_message": r["error_message"],
                    "ended_at": r["ended_at"],
                    "remediation": r["error_remediation"] or "",
                },
            )
        )
    return out


def _protected(
    conn: sqlite3.Connection, newest: dict[str, RecoveryPoint], cfg: NotifyConfig, now: datetime
) -> list[Condition]:
    """backup_missed and consistency_low of every protected VM."""
    running = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT vm_uuid FROM jobs WHERE type = 'backup' AND state IN ('queued', 'in-progress')"
        )
    }
    policies: dict[str, Policy | None] = {}
    out = []
    for prot in list_protections(conn, state=PROTECTED):
        if prot.policy not in policies:
            try:
                policies[prot.policy] = get_policy(conn, prot.policy).policy
            except PolicyNotFound:
                policies[prot.policy] = None
        pol = policies[prot.policy]
        if pol is None:
            continue
        point = newest.get(prot.vm_uuid)
        if prot.vm_uuid not in running:
            c = _missed(prot.vm_uuid, prot.vm_name, prot.since, pol, point, cfg.missed_grace, now)
            out += [c] if c else []
        if point and pol.min_consistency:
            have, want = point.manifest.consistency, pol.min_consistency
            if consistency_rank(have) < consistency_rank(want):
                out.append(
                    Condition(
                        "consistency_low",
                        prot.vm_uuid,
                        prot.vm_name,
                        f"{prot.vm_name}: newest point {point.point_id} is {have}; policy {pol.name} requires {want}",
                        {
                            "vm_uuid": prot.vm_uuid,
                            "point_id": point.point_id,
                            "consistency": have,
                            "required": want,
                            "reason": point.manifest.consistency_reason,
                            "policy": pol.name,
                            "remediation": REMEDIATION["consistency_low"],
                        },
                    )
                )
    return out


def _missed(
    vm_uuid: str,
    vm_name: str,
    since: str,
    pol: Policy,
    point: RecoveryPoint | None,
    grace: timedelta,
    now: datetime,
) -> Condition | None:
    """backup_missed for one protected VM, or None."""
    anchor = _aware(datetime.fromisoformat(since))
    if point is not None:
        anchor = max(anchor, _aware(datetime.fromisoformat(point.manifest.created)))
    slot = next_run(pol.schedule, anchor)
    if slot + grace >= now:
        return None
    objective = rpo(pol.schedule, anchor)
    newest = f"newest point {point.point_id} of {point.manifest.created}" if point else "no recovery point yet"
    return Condition(
        "backup_missed",
        vm_uuid,
        vm_name,
        f"{vm_name}: backup missed: {newest}; policy {pol.name} ({pol.schedule.describe()}, RPO "
        f"{format_duration(objective)}) expected one by {slot.isoformat(timespec='minutes')}",
        {
            "vm_uuid": vm_uuid,
            "policy": pol.name,
            "schedule": pol.schedule.describe(),
            "rpo_s": int(objective.total_seconds()),
            "point_id": point.point_id if point else None,
            "expected_by": slot.isoformat(timespec="seconds"),
            "late_s": int((now - slot).total_seconds()),
            "remediation": REMEDIATION["backup_missed"],
        },
    )


def boot_check_passed(bc: dict[str, Any]) -> bool:
    """A manifest's boot_check verdict ({"result": "passed"|"failed", ...}; older records: {"passed": bool})."""
    return bool(bc.get("result") == "passed" or bc.get("passed") is True)


def _boot_checks(points: list[RecoveryPoint]) -> list[Condition]:
    """boot_check_failed: per VM, the newest point that has a boot-check verdict did not pass."""
    seen: set[str] = set()
    out = []
    for p in points:
        bc = p.manifest.boot_check
        if not bc or p.vm_uuid in seen:
            continue
        seen.add(p.vm_uuid)
        if not boot_check_passed(bc):
            out.append(
                Condition(
                    "boot_check_failed",
                    p.vm_uuid,
                    p.vm_name,
                    f"{p.vm_name}: boot-check of point {p.point_id} failed: {bc.get('reason', '')}",
                    {
                        "vm_uuid": p.vm_uuid,
                        "point_id": p.point_id,
                        "reason": bc.get("reason", ""),
                        "checked_at": bc.get("checked_at"),
                        "job_id": bc.get("job_id"),
                        "remediation": REMEDIATION["boot_check_failed"],
                    },
                )
            )
    return out


def unexpected_full(reason: str | None) -> bool:
    """Whether a full_reason is a chain reset (not the first backup, --full, full_every, a raw disk)."""
    if not reason:
        return False
    from controller.backup.cbt import ChainPlan  # its warnings() is the one list of expected reasons

    return bool(ChainPlan.full(reason).warnings())


def _chain_reset(p: RecoveryPoint) -> Condition | None:
    """chain_reset for a VM's newest point, or None."""
    m = p.manifest
    if m.type != "full" or not unexpected_full(m.full_reason):
        return None
    return Condition(
        "chain_reset",
        p.vm_uuid,
        p.vm_name,
        f"{p.vm_name}: chain reset to a full backup (point {p.point_id}): {m.full_reason}",
        {
            "vm_uuid": p.vm_uuid,
            "point_id": p.point_id,
            "full_reason": m.full_reason,
            "remediation": REMEDIATION["chain_reset"],
        },
    )


def vault_use_percent(root: Path) -> float | None:
    """Use% of the vault's filesystem as df computes it (used / (used + available)); None if it is missing."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return 100.0 * used / (used + avail) if used + avail else None


def _vault_full(root: Path, limit: float, threshold: float) -> list[Condition]:
    """vault_full when the vault filesystem's use is at least limit (threshold, or lower while open)."""
    pct = vault_use_percent(root)
    if pct is None or pct < limit:
        return []
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    return [
        Condition(
            "vault_full",
            "vault",
            "",
            f"vault {root} is {pct:.1f}% full (alert at {threshold:g}%), {free / 2**30:.1f} GiB free",
            {
                "vault": str(root),
                "used_percent": round(pct, 1),
                "threshold_percent": threshold,
                "free_bytes": free,
                "remediation": REMEDIATION["vault_full"],
            },
        )
    ]


def _aware(t: datetime) -> datetime:
    """t with UTC assumed when naive."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)
