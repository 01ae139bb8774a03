"""The vault: publish recovery points atomically, list, verify, delete, measure them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import settings as settings_mod
from controller.errors import VmBackupError
from controller.vault import digest, layout, qemuimg, sparse
from controller.vault.exceptions import InvalidVaultId, ManifestInvalid, PointNotFound, VaultFull
from controller.vault.layout import new_point_id
from controller.vault.manifest import (
    DiskRecord,
    Manifest,
    RecoveryPoint,
    fsync_dir,
    read_manifest,
    write_manifest,
)
from controller.vault.writer import PointWriter

__all__ = ["DiskVerify", "PointWriter", "Vault", "VerifyResult", "new_point_id"]

#: free space kept back beyond what a point needs (filesystems misbehave when completely full).
SPACE_MARGIN = 64 << 20


@dataclass
class DiskVerify:
    """One disk's verification outcome: status ok | missing | checksum-mismatch | check-failed."""

    target: str
    file: str
    status: str
    detail: str = ""


@dataclass
class VerifyResult:
    """A point's verification: ok only if every disk is present, matches its checksum, passes qemu-img check."""

    point_id: str
    vm_uuid: str
    vm_name: str
    disks: list[DiskVerify] = field(default_factory=list)
    error: str = ""  # manifest-level problem

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.error and all(d.status == "ok" for d in self.disks)

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
        return PointWriter(self, layout.check_uuid(vm_uuid), point_id or new_point_id())

    def _vm_dirs(self, vm_uuid: str | None) -> list[Path]:
        """The per-VM directories to look at (one, or all that look like uuids)."""
        d = layout.vm_dir(self.root, vm_uuid) if vm_uuid is not None else None
        if not self.root.is_dir():
            return []
        if d is not None:
            return [d] if d.is_dir() else []
        return sorted(
            p for p in self.root.resolve().iterdir() if p.is_dir() and layout.UUID_RE.fullmatch(p.name)
        )

    def list_points(self, vm_uuid: str | None = None, include_broken: bool = False) -> list[RecoveryPoint]:
        """Published points, newest first; skips .tmp-*, foreign entries, and unreadable ones unless asked."""
        points: list[RecoveryPoint] = []
        for vd in self._vm_dirs(vm_uuid):
            for pd in vd.iterdir():
                if not pd.is_dir() or not layout.POINT_ID_RE.fullmatch(pd.name):
                    continue
                try:
                    points.append(RecoveryPoint(pd, read_manifest(pd)))
                except ManifestInvalid as e:
                    if include_broken:
                        points.append(RecoveryPoint(pd, _placeholder(vd.name, pd.name), error=e.message))
        points.sort(key=lambda p: p.point_id, reverse=True)
        return points

    def get_point(self, point_id: str) -> RecoveryPoint:
        """The published point with this id, in whichever VM directory it lives; POINT_NOT_FOUND otherwise."""
        layout.check_point_id(point_id)
        for vd in self._vm_dirs(None):
            pd = layout.point_dir(self.root, vd.name, point_id)
            if pd.is_dir():
                return RecoveryPoint(pd, read_manifest(pd))
        raise PointNotFound(f"no recovery point {point_id} in {self.root}")

    def point_path(self, point: RecoveryPoint) -> Path:
        """The point's directory, re-derived from its ids (so a forged RecoveryPoint.path cannot escape)."""
        return layout.point_dir(self.root, point.vm_uuid, point.point_id)

    def disk_path(self, point: RecoveryPoint, rec: DiskRecord) -> Path:
        """Where a stored disk lives, refused unless inside the point's disks/ directory."""
        return layout.disk_path(self.point_path(point), rec.file)

    def verify(self, point: RecoveryPoint) -> VerifyResult:
        """Recompute each disk's checksum and run qemu-img check; report missing/corrupt disks by name."""
        res = VerifyResult(point.point_id, point.vm_uuid, point.vm_name)
        try:
            pdir = self.point_path(point)
            m = read_manifest(pdir)
        except (ManifestInvalid, InvalidVaultId) as e:
            res.error = e.message
            return res
        if not (pdir / layout.DOMAIN_XML).is_file():
            res.error = "domain.xml is missing"
        for rec in m.disks:
            res.disks.append(self._verify_disk(pdir, rec))
        return res

    def _verify_disk(self, pdir: Path, rec: DiskRecord) -> DiskVerify:
        """One stored disk: ok, invalid-path, missing, checksum-mismatch, check-failed or has-backing."""
        try:
            path = layout.disk_path(pdir, rec.file)
        except VmBackupError as e:
            return DiskVerify(rec.target, rec.file, "invalid-path", str(e))
        if not path.is_file():
            return DiskVerify(rec.target, rec.file, "missing", f"{path} does not exist")
        try:
            got = sparse.stream(path, algo=digest.algo_of(rec.digest))
        except OSError as e:
            return DiskVerify(rec.target, rec.file, "missing", f"cannot read {path}: {e}")
        if got.digest != rec.digest:
            detail = f"checksum {got.digest} != recorded {rec.digest}"
            return DiskVerify(rec.target, rec.file, "checksum-mismatch", detail)
        chk = qemuimg.check(path, rec.format)
        if not chk.ok:
            return DiskVerify(rec.target, rec.file, "check-failed", chk.summary)
        try:
            backing = qemuimg.info(path, fmt=rec.format).backing_file
        except VmBackupError as e:
            return DiskVerify(rec.target, rec.file, "check-failed", str(e))
        if backing:
            return DiskVerify(
                rec.target, rec.file, "has-backing", f"not self-contained: backing file {backing}"
            )
        return DiskVerify(rec.target, rec.file, "ok", chk.summary)

    def delete_point(self, point: RecoveryPoint) -> None:
        """Remove a published point: renamed to .tmp-<id> first (atomic unpublish), then deleted."""
        pdir = self.point_path(point)
        if not pdir.is_dir():
            raise PointNotFound(f"no recovery point {point.point_id} for VM {point.vm_uuid}")
        doomed = layout.tmp_point_dir(self.root, point.vm_uuid, point.point_id)
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
                fd = os.open(pd, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer
                    found.append(pd)
                    if not dry_run:
                        shutil.rmtree(pd)
                finally:
                    os.close(fd)
        return found

    def usage(self) -> dict[str, Any]:
        """Bytes allocated per VM (published points, plus partials separately) and in total."""
        vms: dict[str, dict[str, Any]] = {}
        for vd in self._vm_dirs(None):
            entry: dict[str, Any] = {"points": 0, "bytes": 0, "partial_bytes": 0, "vm_name": ""}
            for pd in vd.iterdir():
                n = _du(pd)
                if pd.name.startswith(layout.TMP_PREFIX):
                    entry["partial_bytes"] += n
                elif layout.POINT_ID_RE.fullmatch(pd.name):
                    entry["points"] += 1
                    entry["bytes"] += n
                    entry["vm_name"] = entry["vm_name"] or _name_of(pd)
            vms[vd.name] = entry
        total = sum(v["bytes"] + v["partial_bytes"] for v in vms.values())
        st = os.statvfs(self.root) if self.root.is_dir() else None
        free = st.f_bavail * st.f_frsize if st else None
        return {"vault": str(self.root), "vms": vms, "total_bytes": total, "free_bytes": free}

    def update_manifest(self, point: RecoveryPoint, **changes: Any) -> RecoveryPoint:
        """Atomically rewrite a point's manifest with some top-level fields changed (e.g. boot_check=...)."""
        allowed = {"boot_check", "verify", "policy", "consistency_reason"}
        bad = set(changes) - allowed
        if bad:
            raise InvalidVaultId(f"manifest fields {sorted(bad)} cannot be changed (only {sorted(allowed)})")
        pdir = self.point_path(point)
        m = read_manifest(pdir)
        for k, v in changes.items():
            setattr(m, k, v)
        write_manifest(pdir, m)
        return RecoveryPoint(pdir, m)


def _du(path: Path) -> int:
    """Allocated bytes under path (files only, no symlinks followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _name_of(pdir: Path) -> str:
    """The VM name a point's manifest records ('' if unreadable)."""
    try:
        return read_manifest(pdir).vm_name
    except ManifestInvalid:
        return ""


def _placeholder(vm_uuid: str, point_id: str) -> Manifest:
    """A stand-in manifest for a point whose manifest is unreadable (RecoveryPoint.error says why)."""
    return Manifest(point_id=point_id, vm_uuid=vm_uuid, vm_name="", host="", created="", consistency="CRASH")
