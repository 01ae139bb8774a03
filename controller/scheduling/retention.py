"""Retention: which recovery points to keep (grandfather-father-son) and which to prune, with reasons.

``select_prunable(points, retention, now)`` is pure. Each rule is applied on its own to all points, newest
first, and a point is kept if any rule keeps it (the union; like restic's ``forget``):

- ``keep_last N``: the N newest points.
- ``keep_daily D`` / ``keep_weekly W`` / ``keep_monthly M`` / ``keep_yearly Y``: the newest point of each
  of the D (W, M, Y) most recent days (ISO weeks, months, years) **that have points**, in the given time zone.
  So a rule keeps exactly min(count, number of distinct periods) points.
- ``max_age``: a point older than now - max_age is pruned even if a rule keeps it. With no count rule at all,
  everything younger than max_age is kept.
- No rule at all: everything is kept.
- Always kept, whatever the rules: the newest point whose last verify passed ("newest verified point"), the
  newest point whose last boot-check passed ("newest boot-checked point"), and the newest *good* point (the
  newest non-CRASH point not known to have failed verify or boot-check, else the newest), so a corrupt newest
  point can never make prune delete the only point known to be good.
- Always kept: a pinned point (``pinned_by``: a VM runs on its files, e.g. an instant restore; its whole chain is
  pinned, so no merge touches it either).
- Always kept: a protected point (``protected_by``: ``vault protect``, the policy's ``protect_newest``;
  controller/vault/protect.py) and every point it is built on, back to its full (a merge would rewrite them).

Applying it to what it kept prunes nothing more (idempotent). Unprotected-with-retain VMs are not pruned at
all: that is decided by the caller (controller.scheduling.prune), not here.

Chains (incremental points, ``PointRecord.parent``): the rules select points as above; a pruned point that a kept
point needs (its child, or its child's child ...) gets ``Verdict.merge_into`` = its child: it is merged into the
child (``Vault.delete_point``), never deleted with the points built on it. :func:`execution_order` gives the order
that keeps every step valid: plain deletions newest first (each has no child left when it goes), then the merges
oldest first (each into its child; a run of pruned points folds forward one by one into the kept point).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

from controller.policies.model import Retention, format_duration
from controller.vault.protect import implied


@dataclass(frozen=True)
class PointRecord:
    """What retention needs of a recovery point; `ref` carries the original (e.g. a vault RecoveryPoint)."""

    id: str
    created: datetime
    consistency: str
    ref: Any = None
    verified: bool | None = None  # last verify: passed, failed, or never verified
    boot_checked: bool | None = None  # last boot-check: passed, failed, or never boot-checked
    parent: str | None = None  # the point an incremental is built on (None: a full)
    pinned_by: tuple[str, ...] = ()  # VMs running on this point's files (instant restore): never pruned
    protected_by: tuple[str, ...] = ()  # why it is protected (vault protect, protect_newest): never pruned


@dataclass(frozen=True)
class Verdict:
    """A point and why it is kept or pruned."""

    point: PointRecord
    reasons: tuple[str, ...]
    merge_into: str | None = None  # a pruned point a kept point depends on: merged into this child, not deleted

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "point_id": self.point.id,
            "created": self.point.created.isoformat(),
            "consistency": self.point.consistency,
            "verified": self.point.verified,
            "boot_checked": self.point.boot_checked,
            "reasons": list(self.reasons),
            "parent": self.point.parent,
            "merge_into": self.merge_into,
        }


class Selection(NamedTuple):
    """keep and prune, newest first."""

    keep: list[Verdict]
    prune: list[Verdict]


def _utc(t: datetime) -> datetime:
    """t as UTC-aware (naive means UTC)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _periods(tz: tzinfo) -> dict[str, Callable[[datetime], Hashable]]:
    """Period rule name -> bucket key of a time in tz."""
    return {
        "daily": lambda t: t.astimezone(tz).date(),
        "weekly": lambda t: t.astimezone(tz).isocalendar()[:2],
        "monthly": lambda t: (t.astimezone(tz).year, t.astimezone(tz).month),
        "yearly": lambda t: t.astimezone(tz).year,
    }


def newest_good(points: Iterable[PointRecord]) -> PointRecord | None:
    """The newest non-CRASH point not known to be bad (failed verify or boot-check), else the newest, else None."""
    ordered = sorted(points, key=lambda p: (_utc(p.created), p.id), reverse=True)
    sound = [p for p in ordered if p.verified is not False and p.boot_checked is not False]
    good = [p for p in sound if p.consistency != "CRASH"]
    if good:
        return good[0]
    return ordered[0] if ordered else None


def guarded(points: Iterable[PointRecord]) -> list[tuple[PointRecord, str]]:
    """The points kept whatever the rules, each with why (a point may appear under several reasons)."""
    ordered = sorted(points, key=lambda p: (_utc(p.created), p.id), reverse=True)
    out: list[tuple[PointRecord, str]] = []
    verified = next((p for p in ordered if p.verified is True), None)
    if verified is not None:
        out.append((verified, "newest verified point"))
    booted = next((p for p in ordered if p.boot_checked is True), None)
    if booted is not None:
        out.append((booted, "newest boot-checked point"))
    good = newest_good(ordered)
    if good is not None:
        out.append((good, "newest good point"))
    out += [(p, f"pinned by {', '.join(p.pinned_by)}") for p in ordered if p.pinned_by]
    protected = implied({p.id: list(p.protected_by) for p in ordered}, {p.id: p.parent for p in ordered})
    out += [(p, "; ".join(protected[p.id])) for p in ordered if p.id in protected]
    return out


def select_prunable(
    points: Iterable[PointRecord], retention: Retention, now: datetime, tz: tzinfo = UTC
) -> Selection:
    """Split points into keep and prune (each with reasons) according to retention."""
    ordered = sorted(points, key=lambda p: (_utc(p.created), p.id), reverse=True)
    reasons: dict[str, list[str]] = {p.id: [] for p in ordered}
    if not retention.has_count_rule:
        for p in ordered:
            reasons[p.id].append("no count rule" if retention.max_age else "no retention rule")
    for i, p in enumerate(ordered[: retention.keep_last]):
        reasons[p.id].append(f"last #{i + 1}")
    counts = {
        "daily": retention.keep_daily,
        "weekly": retention.keep_weekly,
        "monthly": retention.keep_monthly,
        "yearly": retention.keep_yearly,
    }
    for rule, key_of in _periods(tz).items():
        seen: set[Hashable] = set()
        for p in ordered:
            if len(seen) >= counts[rule]:
                break
            key = key_of(_utc(p.created))
            if key not in seen:
                seen.add(key)
                reasons[p.id].append(
                    f"{rule} {key if not isinstance(key, tuple) else '-'.join(map(str, key))}"
                )
    if retention.max_age is not None:
        cutoff = _utc(now) - retention.max_age
        for p in ordered:
            if _utc(p.created) < cutoff:
                reasons[p.id] = [f"older than max age {format_duration(retention.max_age)}"]
    keep_ids = {p.id for p in ordered if reasons[p.id] and not reasons[p.id][0].startswith("older than")}
    for guard, why in guarded(ordered):
        if guard.id not in keep_ids:
            keep_ids.add(guard.id)
            reasons[guard.id] = [f"{why} (always kept)"]
        else:
            reasons[guard.id].append(why)
    keep = [Verdict(p, tuple(reasons[p.id])) for p in ordered if p.id in keep_ids]
    into = merge_targets(ordered, keep_ids)
    prune = [
        Verdict(p, tuple(reasons[p.id]) or ("not selected by any rule",), into.get(p.id))
        for p in ordered
        if p.id not in keep_ids
    ]
    return Selection(keep, prune)


def merge_targets(points: Iterable[PointRecord], keep_ids: set[str]) -> dict[str, str]:
    """{pruned point id: its child's id} for each pruned point that a kept point is built on (directly or not)."""
    by_id = {p.id: p for p in points}
    child: dict[str, str] = {}
    for p in sorted(by_id.values(), key=lambda p: p.id, reverse=True):  # the lowest id wins, like chain.child_of
        if p.parent in by_id:
            child[p.parent] = p.id
    out: dict[str, str] = {}
    for pid in by_id:
        if pid in keep_ids or pid not in child:
            continue
        cur: str | None = child[pid]
        seen = {pid}
        while cur is not None and cur not in seen and cur not in keep_ids:
            seen.add(cur)
            cur = child.get(cur)
        if cur is not None and cur in keep_ids:
            out[pid] = child[pid]
    return out


def execution_order(prune: Iterable[Verdict]) -> list[Verdict]:
    """The pruned points in the order to remove them: deletions newest first, then merges oldest first."""
    by_age = sorted(prune, key=lambda v: (_utc(v.point.created), v.point.id))
    deletes = [v for v in reversed(by_age) if v.merge_into is None]
    return deletes + [v for v in by_age if v.merge_into is not None]
