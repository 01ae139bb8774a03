"""Incremental chains in the vault: which point backs which.

A full point stands alone; an incremental point's disks are qcow2 files backed by its parent's (``manifest.parent``,
``DiskRecord.backing`` = ``../../<parent>/disks/<target>.qcow2``). Chains are linear: each incremental's parent is
the VM's latest point when it was taken, so a point has at most one child::

    for p in chain(vault, point):        # the full first, `point` last; CHAIN_BROKEN if a parent is missing
        ...
    child = child_of(vault, point)       # the point built on it, or None
    later = dependents(vault, point)     # every point that needs it to restore, nearest first
"""

from __future__ import annotations

from controller.vault import layout
from controller.vault.exceptions import ChainBroken
from controller.vault.manifest import RecoveryPoint
from controller.vault.vault import Vault

Known = dict[str, RecoveryPoint] | None  #: the VM's points by id, when the caller has them already


def backing_name(parent_id: str, target: str) -> str:
    """The backing path an incremental disk of `target` writes into its qcow2 header: relative to its directory."""
    return f"../../{layout.check_point_id(parent_id)}/{layout.disk_file_name(layout.check_target(target), 'qcow2')}"


def points_by_id(vault: Vault, vm_uuid: str) -> dict[str, RecoveryPoint]:
    """The VM's published, readable points by id."""
    return {p.point_id: p for p in vault.list_points(vm_uuid)}


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
