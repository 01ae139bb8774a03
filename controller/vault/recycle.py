"""Soft delete: a deleted point is kept ``soft_delete_days`` (settings; 0 = deleted at once) before it is purged.

Deleting a point by hand (`vault delete`), by retention (`prune`) or by `unprotect --delete-data` writes a durable
tombstone ``VAULT/<vm>/.deleted-<point>.json`` (``layout.tombstone_path``: deleted_at, by, purge_after) and touches
nothing else: the point's files stay where they are, so the incremental points built on it (backing
``../../<point>/disks/<t>.qcow2``) keep restoring. A soft-deleted point is hidden from ``Vault.list_points`` (unless
``include_deleted``), refused by ``Vault.get_point`` (POINT_DELETED: restore, verify POINT, delete), not counted by
retention, and a backup whose VM's newest point is soft-deleted is a full ("newest point X was deleted": the chain
never forks). Usage::

    out = soft_delete(vault, vm_uuid, point_id, days=14, by="prune")   # DeleteOutcome, action "soft-deleted"
    for d in list_deleted(vault): print(d.point_id, d.purge_after)
    undelete(vault, point_id)                                           # the point is back (UNDELETE_REFUSED if not)
    report = purge(vault, now=None, everything=False)                   # the real deletes of the points now due

Purging is merge.delete_or_merge under the VM lock (a point another depends on is merged into its child; a pinned
point is skipped: POINT_PINNED), due points newest first, then the tombstone goes. A crash between the steps is
resumed: an interrupted merge by its intent, a tombstone whose point directory is gone is just removed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.errors import VmBackupError
from controller.vault import layout, merge, pins
from controller.vault.exceptions import PointDeleted, PointNotFound, UndeleteRefused
from controller.vault.manifest import RecoveryPoint, fsync_dir, read_manifest, write_file_durable
from controller.vault.merge import DeleteOutcome
from controller.vault.vault import Vault, _du

TOMBSTONE_VERSION = 1
BY = ("vault delete", "prune", "unprotect")  #: who deletes: the tombstone's `by`


@dataclass
class Tombstone:
    """The durable record of a soft-deleted point (VAULT/<vm>/.deleted-<point>.json)."""

    vm_uuid: str
    point_id: str
    deleted_at: str  # ISO time, UTC
    by: str  # vault delete | prune | unprotect
    purge_after: str  # ISO time, UTC: from then on, purge deletes it for real
    vm_name: str = ""
    version: int = TOMBSTONE_VERSION

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_file(cls, path: Path) -> Tombstone:
        """Read a tombstone; ValueError/OSError if it cannot be read (such a point stays deleted, never purged)."""
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("version") != TOMBSTONE_VERSION:
            raise ValueError(f"unknown tombstone version in {path}")
        return cls(**d)

    def due(self, now: datetime) -> bool:
        """Whether purge_after has passed."""
        return datetime.fromisoformat(self.purge_after) <= now


@dataclass
class DeletedPoint:
    """A soft-deleted point as `points --deleted` shows it."""

    vm_uuid: str
    point_id: str
    tombstone: Tombstone | None  # None: its record cannot be read (error says why)
    point: RecoveryPoint | None  # None: its files are gone (a purge was interrupted) or its manifest is unreadable
    stored_bytes: int = 0  # bytes its directory holds
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON view: the point's own fields (when readable) plus deleted_at, by, purge_after, stored_bytes."""
        base = self.point.to_dict() if self.point is not None else {"point_id": self.point_id, "vm_uuid": self.vm_uuid}
        t = self.tombstone
        return {
            **base,
            "deleted_at": t.deleted_at if t else None,
            "deleted_by": t.by if t else None,
            "purge_after": t.purge_after if t else None,
            "stored_bytes": self.stored_bytes,
            "error": self.error,
        }


@dataclass
class PurgeReport:
    """What a purge did: the points deleted for real, those merged into their child, those left and why."""

    purged: list[str] = field(default_factory=list)  # every point removed (plain deletes and merges)
    merged: dict[str, str] = field(default_factory=dict)  # point -> the child it was merged into
    skipped: dict[str, str] = field(default_factory=dict)  # point -> why it was not purged (e.g. POINT_PINNED)
    waiting: int = 0  # soft-deleted points not due yet

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return asdict(self)


def is_deleted(root: Path, vm_uuid: str, point_id: str) -> bool:
    """Whether the point has a tombstone (readable or not)."""
    return layout.tombstone_path(root, vm_uuid, point_id).exists()


def soft_delete(
    vault: Vault, vm_uuid: str, point_id: str, days: int, by: str, now: datetime | None = None
) -> DeleteOutcome:
    """Tombstone the point (nothing else changes); with days 0, delete it at once (merge.delete_or_merge).

    Under the VM lock (interrupted merges finished first); POINT_PINNED when a VM runs on its files, POINT_DELETED
    when it is soft-deleted already, POINT_NOT_FOUND when it does not exist.
    """
    if by not in BY:
        raise ValueError(f"unknown deleter {by!r}")
    if days <= 0:
        return merge.delete_or_merge(vault, vm_uuid, point_id)
    now = now or datetime.now(UTC)
    with merge.chain_lock(vault, vm_uuid):
        pdir = layout.point_dir(vault.root, vm_uuid, point_id)
        if not pdir.is_dir() or pdir.is_symlink():
            raise PointNotFound(f"no recovery point {point_id} for VM {vm_uuid}")
        if is_deleted(vault.root, vm_uuid, point_id):
            raise PointDeleted(f"recovery point {point_id} is already soft-deleted")
        pins.refuse_if_pinned(vault.root, vm_uuid, point_id, "delete")
        name = ""
        with contextlib.suppress(VmBackupError):
            name = read_manifest(pdir).vm_name
        t = Tombstone(vm_uuid, point_id, _iso(now), by, _iso(now + timedelta(days=days)), name)
        write_file_durable(layout.tombstone_path(vault.root, vm_uuid, point_id), t.to_bytes())
    return DeleteOutcome(vm_uuid, point_id, "soft-deleted", purge_after=t.purge_after)


def list_deleted(vault: Vault, vm_uuid: str | None = None) -> list[DeletedPoint]:
    """The soft-deleted points (of one VM or all), newest first."""
    out: list[DeletedPoint] = []
    for vd in _vm_dirs(vault, vm_uuid):
        for path in sorted(vd.glob(f"{layout.DELETED_PREFIX}*.json")):
            pid = path.name.removeprefix(layout.DELETED_PREFIX).removesuffix(".json")
            if not layout.POINT_ID_RE.fullmatch(pid):
                continue
            out.append(_deleted_point(vault, vd.name, pid, path))
    out.sort(key=lambda d: d.point_id, reverse=True)
    return out


def _deleted_point(vault: Vault, vm_uuid: str, point_id: str, path: Path) -> DeletedPoint:
    """One soft-deleted point: its tombstone, its point (when its files are there) and its bytes."""
    d = DeletedPoint(vm_uuid, point_id, None, None)
    try:
        d.tombstone = Tombstone.from_file(path)
    except (OSError, ValueError, TypeError) as e:
        d.error = f"unreadable tombstone {path.name}: {e}"
    pdir = layout.point_dir(vault.root, vm_uuid, point_id)
    if pdir.is_dir() and not pdir.is_symlink():
        d.stored_bytes = _du(pdir)
        try:
            d.point = RecoveryPoint(pdir, read_manifest(pdir))
        except VmBackupError as e:
            d.error = d.error or e.message
    else:
        d.error = d.error or "its files are gone (purged; `vmbackup vault purge` drops the record)"
    return d


def find_deleted(vault: Vault, point_id: str) -> DeletedPoint:
    """The soft-deleted point with this id; UNDELETE_REFUSED when there is none (purged, or not deleted)."""
    layout.check_point_id(point_id)
    for vd in _vm_dirs(vault, None):
        path = layout.tombstone_path(vault.root, vd.name, point_id)
        if path.exists():
            return _deleted_point(vault, vd.name, point_id, path)
    try:
        vault.get_point(point_id)
    except PointNotFound:
        raise UndeleteRefused(
            f"no soft-deleted point {point_id}: it was purged already (or never existed)",
            details={"point_id": point_id},
        ) from None
    raise UndeleteRefused(f"recovery point {point_id} is not deleted", details={"point_id": point_id})


def undelete(vault: Vault, point_id: str) -> RecoveryPoint:
    """Bring a soft-deleted point back (its tombstone goes); UNDELETE_REFUSED when it was purged or is not deleted."""
    found = find_deleted(vault, point_id)
    with merge.chain_lock(vault, found.vm_uuid):  # a purge of it runs under this lock: it is before or after
        path = layout.tombstone_path(vault.root, found.vm_uuid, point_id)
        pdir = layout.point_dir(vault.root, found.vm_uuid, point_id)
        if not path.exists():
            raise UndeleteRefused(f"recovery point {point_id} was purged meanwhile", details={"point_id": point_id})
        if not (pdir / layout.MANIFEST).is_file() or pdir.is_symlink():
            raise UndeleteRefused(
                f"recovery point {point_id} cannot be brought back: it was purged (its files are gone)",
                details={"point_id": point_id},
            )
        path.unlink()
        fsync_dir(path.parent)
    return vault.get_point(point_id)


def purge(
    vault: Vault, now: datetime | None = None, everything: bool = False, vm_uuid: str | None = None
) -> PurgeReport:
    """Delete for real every soft-deleted point whose purge_after has passed (all of them with everything).

    A point whose files are gone (a purge interrupted after its delete) only loses its tombstone. Per VM, the due
    points newest first: merge.delete_or_merge (a point another one depends on is merged into its
    child), re-checking under the VM lock that the tombstone is still there (an undelete wins); then the tombstone
    goes. A pinned point (POINT_PINNED) or one that fails is skipped with why; a later purge retries it.
    """
    now = now or datetime.now(UTC)
    report = PurgeReport()
    for d in list_deleted(vault, vm_uuid):
        gone = not layout.point_dir(vault.root, d.vm_uuid, d.point_id).is_dir()  # an earlier purge was interrupted
        if d.tombstone is None and not gone:
            report.skipped[d.point_id] = d.error
        elif not everything and not gone and d.tombstone is not None and not d.tombstone.due(now):
            report.waiting += 1
        else:
            _purge_one(vault, d, report)
    return report


def _purge_one(vault: Vault, d: DeletedPoint, report: PurgeReport) -> None:
    """The real delete of one due point, then its tombstone (a crash between the two: the next purge drops it)."""
    path = layout.tombstone_path(vault.root, d.vm_uuid, d.point_id)

    def still_deleted() -> None:
        """Under the VM lock: refuse when the point was brought back meanwhile."""
        if not path.exists():
            raise UndeleteRefused(f"point {d.point_id} was undeleted: not purged")

    pdir = layout.point_dir(vault.root, d.vm_uuid, d.point_id)
    try:
        if pdir.is_dir():
            out = merge.delete_or_merge(vault, d.vm_uuid, d.point_id, check=still_deleted)
            if out.into is not None:
                report.merged[d.point_id] = out.into
        else:  # an earlier purge crashed after the delete; finish its merge (if any) and drop the leftovers
            merge.resume_merges(vault, d.vm_uuid)
            tmp = layout.tmp_point_dir(vault.root, d.vm_uuid, d.point_id)
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
    except UndeleteRefused:
        return
    except (VmBackupError, OSError) as e:
        report.skipped[d.point_id] = f"{getattr(e, 'code', type(e).__name__)}: {getattr(e, 'message', e)}"
        return
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    report.purged.append(d.point_id)


def deleted_bytes(vault: Vault) -> int:
    """Bytes held by soft-deleted points (the whole vault)."""
    return sum(d.stored_bytes for d in list_deleted(vault))


def newest_deleted(vault: Vault, vm_uuid: str) -> str | None:
    """The VM's newest point when it is soft-deleted (a backup must not build beside it: a full), else None."""
    pts = vault.list_points(vm_uuid, include_deleted=True)
    if pts and is_deleted(vault.root, vm_uuid, pts[0].point_id):
        return pts[0].point_id
    return None


def _vm_dirs(vault: Vault, vm_uuid: str | None) -> list[Path]:
    """The VM directories to look in (no symlinks)."""
    return vault._vm_dirs(vm_uuid)


def _iso(t: datetime) -> str:
    """An ISO time to the second, UTC."""
    return t.astimezone(UTC).isoformat(timespec="seconds")
