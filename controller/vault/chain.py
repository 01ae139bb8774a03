"""Incremental chains in the vault: which point backs which.

A full point stands alone; an incremental point's disks are qcow2 files backed by its parent's (``manifest.parent``,
``DiskRecord.backing`` = ``../../<parent>/disks/<target>.qcow2``). Chains are linear: each incremental's parent is
the VM's latest point when it was taken, so a point has at most one child::

    for p in chain(vault, point):        # the full first, `point` last; CHAIN_BROKEN if a parent is missing
        ...
    child = child_of(vault, point)       # the point built on it, or None
    later = dependents(vault, point)     # every point that needs it to restore, nearest first
    files = disk_chain(vault, point, "vdb")  # (point, record) per file a disk's restore reads, the full's first

Verification by chain: a point is only as good as every point it is built on. ``mark_dependents`` fails each
result whose chain holds a failed point ("depends on point X, which failed verification").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from controller.vault import layout
from controller.vault.exceptions import ChainBroken
from controller.vault.manifest import DiskRecord, RecoveryPoint

if TYPE_CHECKING:  # vault.py imports this module
    from controller.vault.vault import Vault, VerifyResult

Known = dict[str, RecoveryPoint] | None  #: the VM's points by id, when the caller has them already


def backing_name(parent_id: str, target: str) -> str:
    """The backing path an incremental disk of `target` writes into its qcow2 header: relative to its directory."""
    return f"../../{layout.check_point_id(parent_id)}/{layout.disk_file_name(layout.check_target(target), 'qcow2')}"


def points_by_id(vault: Vault, vm_uuid: str) -> dict[str, RecoveryPoint]:
    """The VM's published, readable points by id, soft-deleted ones included (their files still back their children)."""
    return {p.point_id: p for p in vault.list_points(vm_uuid, include_deleted=True)}


def chain(vault: Vault, point: RecoveryPoint, known: Known = None) -> list[RecoveryPoint]:
    """The points `point` needs to restore, its full first and itself last; CHAIN_BROKEN if one is missing."""
    by_id = known if known is not None else points_by_id(vault, point.vm_uuid)
    out = [point]
    seen = {point.point_id}
    while out[-1].manifest.parent:
        pid = out[-1].manifest.parent
        parent = by_id.get(pid)
        if parent is None or pid in seen:
            raise ChainBroken(
                f"point {point.point_id} needs point {pid}, which is {'a loop' if pid in seen else 'missing'} "
                f"in the vault (parent of {out[-1].point_id})",
                details={"point_id": point.point_id, "missing": pid},
            )
        seen.add(pid)
        out.append(parent)
    out.reverse()
    return out


def child_of(vault: Vault, point: RecoveryPoint, known: Known = None) -> RecoveryPoint | None:
    """The point whose parent is `point` (chains are linear), or None."""
    by_id = known if known is not None else points_by_id(vault, point.vm_uuid)
    kids = sorted((p for p in by_id.values() if p.manifest.parent == point.point_id), key=lambda p: p.point_id)
    return kids[0] if kids else None


def dependents(vault: Vault, point: RecoveryPoint, known: Known = None) -> list[RecoveryPoint]:
    """Every point that needs `point` to restore (its child, the child's child, ...), nearest first."""
    by_id = known if known is not None else points_by_id(vault, point.vm_uuid)
    out: list[RecoveryPoint] = []
    cur: RecoveryPoint | None = point
    while cur is not None:
        cur = child_of(vault, cur, by_id)
        if cur is not None:
            if any(p.point_id == cur.point_id for p in out):
                break
            out.append(cur)
    return out


def latest(vault: Vault, vm_uuid: str) -> RecoveryPoint | None:
    """The VM's newest published point (the parent a new incremental builds on), or None."""
    pts = vault.list_points(vm_uuid)
    return pts[0] if pts else None


def disk_chain(
    vault: Vault, point: RecoveryPoint, target: str, known: Known = None
) -> list[tuple[RecoveryPoint, DiskRecord]]:
    """The stored files a restore of `target` from `point` reads, the self-contained one first, `point`'s last.

    Walks the disk's backing, not the points: a disk copied in full inside an incremental point ends its chain.
    CHAIN_BROKEN when a point on the way is missing, lacks the disk, or the backing does not name its parent.
    """
    by_id = known if known is not None else points_by_id(vault, point.vm_uuid)
    out: list[tuple[RecoveryPoint, DiskRecord]] = []
    cur = point
    while True:
        rec = cur.manifest.disk(target)
        if rec is None:
            raise ChainBroken(
                f"point {point.point_id}: disk {target} needs point {cur.point_id}, which has no disk {target}",
                details={"point_id": point.point_id, "target": target, "missing_in": cur.point_id},
            )
        out.append((cur, rec))
        if not rec.backing:
            break
        pid = cur.manifest.parent
        if not pid or rec.backing != backing_name(pid, target):
            raise ChainBroken(
                f"point {cur.point_id}: disk {target} is backed by {rec.backing!r}, which is not its parent "
                f"point {pid}'s disk",
                details={"point_id": point.point_id, "target": target, "backing": rec.backing},
            )
        nxt = by_id.get(pid)
        if nxt is None or any(p.point_id == pid for p, _ in out):
            raise ChainBroken(
                f"point {point.point_id}: disk {target} needs point {pid}, which is "
                f"{'a loop' if nxt is not None else 'missing'} in the vault (parent of {cur.point_id})",
                details={"point_id": point.point_id, "target": target, "missing": pid},
            )
        cur = nxt
    out.reverse()
    return out


def chain_problems(vault: Vault, point: RecoveryPoint, known: Known = None) -> list[str]:
    """What is wrong with how `point` hangs in its chain ("<target>: CHAIN_BROKEN: ..."), [] when nothing."""
    problems = []
    for rec in point.manifest.disks:
        if rec.kind == "incremental" and not rec.backing:
            problems.append(f"{rec.target}: an incremental disk without a recorded backing file")
        elif rec.backing:
            try:
                disk_chain(vault, point, rec.target, known)
            except ChainBroken as e:
                problems.append(f"{rec.target}: {e.code}: {e.message}")
    return problems


def ancestors(vault: Vault, point: RecoveryPoint, known: Known = None) -> list[RecoveryPoint]:
    """The points `point` is built on, nearest first, as far as they exist (chain_problems reports a gap)."""
    return _up(point, known if known is not None else points_by_id(vault, point.vm_uuid))


def _up(point: RecoveryPoint, by_id: dict[str, RecoveryPoint]) -> list[RecoveryPoint]:
    """`point`'s ancestors found in by_id, nearest first (stops at a missing one or a loop)."""
    out: list[RecoveryPoint] = []
    pid = point.manifest.parent
    while pid and pid in by_id and pid != point.point_id and all(p.point_id != pid for p in out):
        out.append(by_id[pid])
        pid = by_id[pid].manifest.parent
    return out


def parents_first(points: Iterable[RecoveryPoint]) -> list[RecoveryPoint]:
    """The points ordered so that each comes after its parent (when the parent is among them)."""
    by_id = {p.point_id: p for p in points}
    out: list[RecoveryPoint] = []
    placed: set[str] = set()
    for p in sorted(by_id.values(), key=lambda x: x.point_id):
        todo = [p, *_up(p, by_id)]
        for q in reversed(todo):
            if q.point_id not in placed:
                placed.add(q.point_id)
                out.append(q)
    return out


def mark_dependent(point: RecoveryPoint, res: VerifyResult, failed: dict[str, str]) -> None:
    """Fail `res` if `point`'s parent failed (`failed`: point id -> the failed point it stands for), and
    record `point` in `failed` when it fails. Call parents first (``parents_first``)."""
    parent = point.manifest.parent
    bad = failed.get(parent) if parent else None
    if not res.ok:
        failed[point.point_id] = point.point_id
    elif bad is not None:
        failed[point.point_id] = bad
    if bad is not None:
        res.problems.append(f"depends on point {bad}, which failed verification")


def mark_dependents(results: Iterable[tuple[RecoveryPoint, VerifyResult]]) -> None:
    """Fail every result whose chain holds a failed point, naming it ("depends on point X, which failed ...")."""
    pairs = {p.point_id: (p, r) for p, r in results}
    failed: dict[str, str] = {}
    for p in parents_first(p for p, _ in pairs.values()):
        mark_dependent(p, pairs[p.point_id][1], failed)
