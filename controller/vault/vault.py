"""The vault: publish recovery points atomically, list, verify, delete, measure them."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import settings as settings_mod
from controller.errors import VmBackupError
from controller.locks import flocked
from controller.vault import chain, digest, layout, sums
from controller.vault.exceptions import (
    ManifestFieldReadOnly,
    ManifestIdMismatch,
    ManifestInvalid,
    PathEscape,
    PointDeleted,
    PointNotFound,
    VaultFull,
)
from controller.vault.layout import new_point_id
from controller.vault.manifest import (
    DiskRecord,
    Manifest,
    RecoveryPoint,
    fsync_dir,
    read_manifest,
)

if TYPE_CHECKING:
    from controller.vault.merge import DeleteOutcome
    from controller.vault.writer import PointWriter

__all__ = ["DiskVerify", "Vault", "VerifyResult", "new_point_id"]

#: free space kept back beyond what a point needs (filesystems misbehave when completely full).
SPACE_MARGIN = 64 << 20


@dataclass
class DiskVerify:
    """One disk's verification outcome.

    status: ok | invalid-path | missing | checksum-mismatch | check-failed | has-backing (a full disk with a backing
    file) | backing-mismatch (an incremental's backing is not the recorded one), or not-in-manifest for a file in
    disks/ that the manifest does not list (target is then the file's stem).
    """

    target: str
    file: str
    status: str
    detail: str = ""


@dataclass
class VerifyResult:
    """A point's verification: ok only if every disk is present, matches its checksum, passes qemu-img check,
    disks/ holds nothing else, manifest.json and domain.xml match SHA256SUMS, and (incremental) every point it is
    built on exists and verifies (problems then holds "depends on point X, which failed verification").

    A VM directory that cannot be entered (a symlink: PATH_ESCAPE) is one result with point_id "" and error set.
    """

    point_id: str
    vm_uuid: str
    vm_name: str
    disks: list[DiskVerify] = field(default_factory=list)
    error: str = ""  # the point (or VM directory) could not be checked at all
    problems: list[str] = field(default_factory=list)  # metadata errors, each "<file>: <what>"
    warnings: list[str] = field(default_factory=list)  # e.g. sums.NO_DIGEST_WARNING; do not make it fail

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (warnings allowed)."""
        return not self.error and not self.problems and all(d.status == "ok" for d in self.disks)

    @property
    def bad_disks(self) -> list[str]:
        """Targets that are missing or corrupt."""
        return [d.target for d in self.disks if d.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "point_id": self.point_id,
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "ok": self.ok,
            "error": self.error,
            "problems": self.problems,
            "warnings": self.warnings,
            "bad_disks": self.bad_disks,
            "disks": [vars(d) for d in self.disks],
        }


class Vault:
    """A vault directory holding VAULT/<vm-uuid>/<point-id>/ recovery points."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else settings_mod.load().vault

    def _ensure_root(self) -> Path:
        """Create the vault directory if needed (0700) and return it resolved."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.root.resolve()

    def check_space(self, required_bytes: int) -> None:
        """Raise VAULT_FULL unless the vault filesystem has required_bytes (plus a margin) free."""
        st = os.statvfs(self._ensure_root())
        free = st.f_bavail * st.f_frsize
        if free < required_bytes + SPACE_MARGIN:
            raise VaultFull(
                f"vault {self.root} has {free / 2**30:.2f} GiB free; this point needs about "
                f"{(required_bytes + SPACE_MARGIN) / 2**30:.2f} GiB",
                details={"free_bytes": free, "required_bytes": required_bytes},
            )

    def new_point(self, vm_uuid: str, point_id: str | None = None) -> PointWriter:
        """Start an unpublished point under VAULT/<vm-uuid>/.tmp-<point-id>/."""
        root, vm_uuid = self._ensure_root(), layout.check_uuid(vm_uuid)
        if point_id is None:
            vd = root / vm_uuid
            ids = [p.name.removeprefix(layout.TMP_PREFIX) for p in vd.iterdir()] if vd.is_dir() else []
            point_id = new_point_id(after=max((i for i in ids if layout.POINT_ID_RE.fullmatch(i)), default=None))
        from controller.vault.writer import PointWriter  # the copy engine and key store: only writers load them

        return PointWriter(root, vm_uuid, point_id)

    def _vm_entries(self, vm_uuid: str | None) -> list[tuple[str, Path | None, str]]:
        """(uuid, directory, "") per VM directory, or (uuid, None, why) for one that is a symlink (PATH_ESCAPE)."""
        d = layout.vm_dir(self.root, vm_uuid) if vm_uuid is not None else None
        if not self.root.is_dir():
            return []
        if d is not None:
            return [(d.name, d, "")] if d.is_dir() else []
        out: list[tuple[str, Path | None, str]] = []
        for p in sorted(self.root.resolve().iterdir()):
            if not layout.UUID_RE.fullmatch(p.name) or not p.is_dir():
                continue
            try:
                out.append((p.name, layout.vm_dir(self.root, p.name), ""))
            except PathEscape as e:
                out.append((p.name, None, f"{e.code}: {e.message}"))
        return out

    def _vm_dirs(self, vm_uuid: str | None) -> list[Path]:
        """The per-VM directories to look at (one, or all that look like uuids and are no symlink)."""
        return [d for _, d, _ in self._vm_entries(vm_uuid) if d is not None]

    def _points_in(self, vd: Path, include_broken: bool) -> list[RecoveryPoint]:
        """The published points of one VM directory; broken ones (error set) only if asked."""
        points: list[RecoveryPoint] = []
        for pd in sorted(vd.iterdir()):
            if not layout.POINT_ID_RE.fullmatch(pd.name) or not pd.is_dir():
                continue
            try:
                points.append(RecoveryPoint(pd, read_manifest(layout.point_dir(self.root, vd.name, pd.name))))
            except (ManifestInvalid, PathEscape) as e:
                if include_broken:
                    error = f"{e.code}: {e.message}" if isinstance(e, PathEscape) else e.message
                    points.append(RecoveryPoint(pd, _placeholder(vd.name, pd.name), error=error))
        return points

    def list_points(
        self, vm_uuid: str | None = None, include_broken: bool = False, include_deleted: bool = False
    ) -> list[RecoveryPoint]:
        """Published points, newest first; skips .tmp-*, foreign entries, symlinked VM directories, and
        unreadable points or points whose manifest ids differ from their directories (unless include_broken),
        points being merged into their child (a .merge-<id>.json intent, see merge.py) and soft-deleted points
        (a .deleted-<id>.json tombstone, see recycle.py; unless include_deleted)."""
        points = [p for vd in self._vm_dirs(vm_uuid) for p in self._points_in(vd, include_broken)]
        points = [p for p in points if not layout.merge_intent_path(self.root, p.vm_uuid, p.point_id).exists()]
        if not include_deleted:
            points = [p for p in points if not layout.tombstone_path(self.root, p.vm_uuid, p.point_id).exists()]
        points.sort(key=lambda p: p.point_id, reverse=True)
        return points

    def get_point(self, point_id: str) -> RecoveryPoint:
        """The published point with this id, in whichever VM directory it lives; POINT_NOT_FOUND otherwise."""
        layout.check_point_id(point_id)
        for vd in self._vm_dirs(None):
            pd = layout.point_dir(self.root, vd.name, point_id)
            if pd.is_dir():
                if layout.merge_intent_path(self.root, vd.name, point_id).exists():
                    raise PointNotFound(f"recovery point {point_id} is being merged into the point built on it")
                if layout.tombstone_path(self.root, vd.name, point_id).exists():
                    raise PointDeleted(f"recovery point {point_id} is soft-deleted", details={"point_id": point_id})
                return RecoveryPoint(pd, read_manifest(pd))
        raise PointNotFound(f"no recovery point {point_id} in {self.root}")

    def point_path(self, point: RecoveryPoint) -> Path:
        """The point's directory, re-derived from its ids (so a forged RecoveryPoint.path cannot escape)."""
        return layout.point_dir(self.root, point.vm_uuid, point.point_id)

    def disk_path(self, point: RecoveryPoint, rec: DiskRecord) -> Path:
        """Where a stored disk lives, refused unless inside the point's disks/ directory."""
        return layout.disk_path(self.point_path(point), rec.file)

    def verify(self, point: RecoveryPoint) -> VerifyResult:
        """Check SHA256SUMS, recompute each disk's checksum, run qemu-img check, and cross-check disks/; for an
        incremental point the same for every point it is built on, and their chain (CHAIN_BROKEN problems).

        Never raises for a damaged point: every problem is in the result, naming its file or disk.
        """
        by_id = chain.points_by_id(self, point.vm_uuid) if point.manifest.parent else {}
        res = self._verify_point(point, by_id)
        up = [(p, self._verify_point(p, by_id)) for p in chain.ancestors(self, point, by_id)]
        chain.mark_dependents([*up, (point, res)])
        return res

    def _verify_point(self, point: RecoveryPoint, by_id: dict[str, RecoveryPoint]) -> VerifyResult:
        """verify() of the point's own files, plus how it hangs in its chain (by_id: the VM's points)."""
        res = VerifyResult(point.point_id, point.vm_uuid, point.vm_name)
        try:
            pdir = self.point_path(point)
            meta = sums.check(pdir)
            res.problems, res.warnings = meta.errors, meta.warnings
            m = read_manifest(pdir)
        except (VmBackupError, OSError) as e:
            res.error = f"{e.code}: {e.message}" if isinstance(e, PathEscape) else getattr(e, "message", str(e))
            return res
        if not (pdir / layout.DOMAIN_XML).is_file():
            res.error = "domain.xml is missing"
        for rec in m.disks:
            try:
                res.disks.append(self._verify_disk(pdir, rec))
            except (VmBackupError, OSError) as e:
                res.disks.append(DiskVerify(rec.target, rec.file, "check-failed", str(e)))
        res.disks += _unlisted_disks(pdir, m)
        res.problems += chain.chain_problems(self, RecoveryPoint(pdir, m), by_id)
        return res

    def verify_all(
        self,
        vm_uuid: str | None = None,
        on_point: Callable[[RecoveryPoint, VerifyResult], None] | None = None,
    ) -> list[VerifyResult]:
        """Verify every point (or one VM's), each reported separately, newest first.

        Each file is checked once; a point whose chain holds a failing point fails too, naming it (a VM's points
        are checked parents first, so on_point sees the final result). A point that cannot be loaded (unreadable
        manifest, ids that differ from its directories, a symlink) and a VM directory that is a symlink
        (PATH_ESCAPE, point_id "") are failing results; the others are still verified. on_point(point, result)
        is called for each point that could be loaded and verified.
        """
        results: list[VerifyResult] = []
        for name, vd, why in self._vm_entries(vm_uuid):
            if vd is None:
                results.append(VerifyResult("", name, "", error=why))
                continue
            points = self._points_in(vd, include_broken=True)
            by_id = {p.point_id: p for p in points if not p.error}
            failed: dict[str, str] = {}
            for p in chain.parents_first(points):
                if p.error:
                    res = VerifyResult(p.point_id, p.vm_uuid, p.vm_name, error=p.error)
                else:
                    res = self._verify_point(p, by_id)
                chain.mark_dependent(p, res, failed)
                results.append(res)
                if on_point is not None and not p.error:
                    on_point(p, res)
        results.sort(key=lambda r: (r.point_id, r.vm_uuid), reverse=True)
        return results

    def _verify_disk(self, pdir: Path, rec: DiskRecord) -> DiskVerify:
        """One stored disk: ok, invalid-path, missing, checksum-mismatch, check-failed, has-backing or
        backing-mismatch (an incremental's backing must be exactly the recorded one, a qcow2)."""
        try:
            path = layout.disk_path(pdir, rec.file)
        except VmBackupError as e:
            return DiskVerify(rec.target, rec.file, "invalid-path", str(e))
        if not path.is_file():
            return DiskVerify(rec.target, rec.file, "missing", f"{path} does not exist")
        from controller.vault import keys, qemuimg, sparse  # only verification loads the copy engine and tools

        try:
            got = sparse.stream(path, algo=digest.algo_of(rec.digest))
        except OSError as e:
            return DiskVerify(rec.target, rec.file, "missing", f"cannot read {path}: {e}")
        if got.digest != rec.digest:
            detail = f"checksum {got.digest} != recorded {rec.digest}"
            return DiskVerify(rec.target, rec.file, "checksum-mismatch", detail)
        chk = keys.check_stored(path, rec.format, rec.key_id)  # with its vault key when encrypted
        if not chk.ok:
            return DiskVerify(rec.target, rec.file, "check-failed", chk.summary)
        try:
            inf = qemuimg.info(path, fmt=rec.format)
        except VmBackupError as e:
            return DiskVerify(rec.target, rec.file, "check-failed", str(e))
        if rec.backing and (inf.backing_name, inf.backing_format) != (rec.backing, "qcow2"):
            detail = f"backing file {inf.backing_name!r} ({inf.backing_format}), recorded {rec.backing!r} (qcow2)"
            return DiskVerify(rec.target, rec.file, "backing-mismatch", detail)
        if inf.backing_file and not rec.backing:
            return DiskVerify(
                rec.target, rec.file, "has-backing", f"not self-contained: backing file {inf.backing_file}"
            )
        return DiskVerify(rec.target, rec.file, "ok", chk.summary)

    def delete_point(self, point: RecoveryPoint, soft_delete_days: int = 0, by: str = "vault delete") -> DeleteOutcome:
        """Remove the point loaded from point.path: deleted (delete_by_id of its directory names), or, when another
        point is built on it, merged into that child (merge.py: every later point stays restorable). With
        soft_delete_days > 0 it is only soft-deleted (recycle.py: kept that long, then purged; `by` says who).

        Interrupted merges of the VM are finished first. The manifest's ids are never used to find what to delete:
        a point whose manifest ids differ from its directories (MANIFEST_ID_MISMATCH) is refused unless it is a
        broken placeholder from list_points (deleted only when no point depends on it).
        """
        from controller.vault import merge, protect  # they use Vault (and chain): imported here, not at module load

        vm_uuid, point_id = point.path.parent.name, point.path.name
        if (point.vm_uuid, point.point_id) != (vm_uuid, point_id):
            raise ManifestIdMismatch(
                f"refusing to delete {point.path}: its manifest names point {point.point_id} of VM "
                f"{point.vm_uuid}, not its directory {vm_uuid}/{point_id}"
            )
        protect.refuse_if_protected(self, vm_uuid, point_id, "delete")  # soft or not; merge.py re-checks under lock
        if soft_delete_days > 0:
            from controller.vault import recycle

            return recycle.soft_delete(self, vm_uuid, point_id, soft_delete_days, by)
        return merge.delete_or_merge(self, vm_uuid, point_id)

    def delete_by_id(self, vm_uuid: str, point_id: str) -> None:
        """Remove VAULT/<vm_uuid>/<point_id>, built by layout from the arguments (a real directory, no symlink):
        renamed to .tmp-<id> first (atomic unpublish), then deleted. Its manifest is not read, and a point built on
        it is not looked for: delete_point merges instead when one is."""
        pdir = layout.point_dir(self.root, vm_uuid, point_id)
        if not pdir.is_dir() or pdir.is_symlink():
            raise PointNotFound(f"no recovery point {point_id} for VM {vm_uuid}")
        doomed = layout.tmp_point_dir(self.root, vm_uuid, point_id)
        os.rename(pdir, doomed)
        fsync_dir(pdir.parent)
        shutil.rmtree(doomed)

    def remove_partials(self, vm_uuid: str | None = None, dry_run: bool = False) -> list[Path]:
        """Find (and unless dry_run, delete) .tmp-* point directories left by crashed or aborted writes.

        A directory whose writer is still alive (it holds a flock on it, in any process) is left alone.
        """
        found: list[Path] = []
        for vd in self._vm_dirs(vm_uuid):
            for pd in sorted(vd.iterdir()):
                if not pd.name.startswith(layout.TMP_PREFIX) or pd.is_symlink() or not pd.is_dir():
                    continue
                with flocked(pd, directory=True, blocking=False) as held:
                    if not held:
                        continue  # a live writer
                    found.append(pd)
                    if not dry_run:
                        shutil.rmtree(pd)
        return found

    def usage(self) -> dict[str, Any]:
        """Bytes allocated per VM (published points, plus partials and soft-deleted points separately) and in
        total (all of them)."""
        vms: dict[str, dict[str, Any]] = {}
        for vd in self._vm_dirs(None):
            entry: dict[str, Any] = {"points": 0, "bytes": 0, "partial_bytes": 0, "vm_name": ""}
            entry.update(deleted_points=0, deleted_bytes=0)
            for pd in vd.iterdir():
                if pd.is_symlink():
                    continue  # never counted through (verify reports it)
                n = _du(pd)
                if pd.name.startswith(layout.TMP_PREFIX):
                    entry["partial_bytes"] += n
                elif layout.POINT_ID_RE.fullmatch(pd.name):
                    gone = layout.tombstone_path(self.root, vd.name, pd.name).exists()  # soft-deleted (recycle.py)
                    entry["deleted_points" if gone else "points"] += 1
                    entry["deleted_bytes" if gone else "bytes"] += n
                    entry["vm_name"] = entry["vm_name"] or _name_of(pd)
            vms[vd.name] = entry
        total = sum(v["bytes"] + v["partial_bytes"] + v["deleted_bytes"] for v in vms.values())
        deleted = sum(v["deleted_bytes"] for v in vms.values())
        st = os.statvfs(self.root) if self.root.is_dir() else None
        free = st.f_bavail * st.f_frsize if st else None
        return {"vault": str(self.root), "vms": vms, "total_bytes": total, "deleted_bytes": deleted, "free_bytes": free}

    def update_manifest(self, point: RecoveryPoint, **changes: Any) -> RecoveryPoint:
        """Atomically rewrite a point's manifest with some top-level fields changed (e.g. boot_check=...).

        SHA256SUMS is rewritten with it (sums.rewrite_manifest); METADATA_MISMATCH if the point's manifest.json
        or domain.xml no longer matches it (a tampered point is never re-sealed).
        """
        allowed = {"boot_check", "verify", "policy", "consistency_reason"}
        bad = set(changes) - allowed
        if bad:
            raise ManifestFieldReadOnly(f"manifest fields {sorted(bad)} cannot be changed (only {sorted(allowed)})")
        pdir = self.point_path(point)
        with sums.point_lock(pdir):  # read-modify-write: concurrent updates (verify, boot-check) do not mix
            m = read_manifest(pdir)
            for k, v in changes.items():
                setattr(m, k, v)
            sums.rewrite_manifest(pdir, m)
        return RecoveryPoint(pdir, m)


def _du(path: Path) -> int:
    """Allocated bytes under path (files only, no symlinks followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _unlisted_disks(pdir: Path, m: Manifest) -> list[DiskVerify]:
    """Entries of disks/ the manifest does not list (a listed one that is absent is reported as missing)."""
    listed = {rec.file for rec in m.disks}
    try:
        names = sorted(os.listdir(pdir / layout.DISKS_DIR))
    except OSError:
        return []
    return [
        DiskVerify(name.partition(".")[0], rel, "not-in-manifest", f"{rel} is not listed in the manifest")
        for name in names
        if (rel := f"{layout.DISKS_DIR}/{name}") not in listed
    ]


def _name_of(pdir: Path) -> str:
    """The VM name a point's manifest records ('' if unreadable)."""
    try:
        return read_manifest(pdir).vm_name
    except ManifestInvalid:
        return ""


def _placeholder(vm_uuid: str, point_id: str) -> Manifest:
    """A stand-in manifest for a point whose manifest is unreadable (RecoveryPoint.error says why)."""
    return Manifest(point_id=point_id, vm_uuid=vm_uuid, vm_name="", host="", created="", consistency="CRASH")
