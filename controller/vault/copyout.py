"""Copy-out for restore: stored disk -> destination file, sparse, with the SHA-256 verified while reading."""

from __future__ import annotations

import os
from pathlib import Path

from controller.errors import VmBackupError
from controller.vault import layout, qemuimg, sparse, sums
from controller.vault.exceptions import CopyOutTargetExists, PointCorrupt, PointNotFound
from controller.vault.manifest import DiskRecord, RecoveryPoint, fsync_dir, read_manifest
from controller.vault.vault import Vault


def copy_out_disk(
    point: RecoveryPoint,
    target: str,
    dest_path: str | Path,
    progress: sparse.Progress | None = None,
    vault: Vault | None = None,
    overwrite: bool = False,
) -> DiskRecord:
    """Copy one stored disk to dest_path (written as <dest>.part, renamed when its checksum matched).

    On a checksum mismatch nothing is left at dest_path (nor the .part) and CHECKSUM_MISMATCH names the disk.
    Returns the record of the written copy (source_path = the vault file).
    """
    v = vault or Vault(point.path.parent.parent)
    rec = point.manifest.disk(layout.check_target(target))
    if rec is None:
        raise PointNotFound(f"point {point.point_id} has no disk {target!r} (it has {_targets(point)})")
    src = v.disk_path(point, rec)
    if not src.is_file():
        raise PointCorrupt(
            f"point {point.point_id}: disk {target} is missing ({src})", details={"disk": target}
        )
    dest = Path(dest_path)
    if dest.exists() and not overwrite:
        raise CopyOutTargetExists(f"destination {dest} already exists; refusing to overwrite it")
    part = dest.with_name(dest.name + ".part")
    res = sparse.copy_verified(src, part, rec.digest, target, progress)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return DiskRecord(
        target=target,
        file=str(dest),
        format=rec.format,
        virtual_size=rec.virtual_size,
        logical_size=res.logical_size,
        stored_bytes=res.stored_bytes,
        digest=res.digest,
        source_path=str(src),
        method="sparse-copy",
    )


def verify_point_quick(point: RecoveryPoint, vault: Vault | None = None) -> None:
    """Fail before a restore touches anything: manifest, domain.xml and every disk present and plausible.

    manifest.json and domain.xml must match SHA256SUMS (an older point without it passes that part).
    Each disk must have the recorded size, be a readable image of the recorded format and virtual size,
    and have no backing file. It does not hash (copy_out_disk does, while copying).
    """
    v = vault or Vault(point.path.parent.parent)
    pdir = v.point_path(point)
    m = read_manifest(pdir)
    problems: dict[str, str] = {}
    for err in sums.check(pdir).errors:
        name, _, what = err.partition(": ")
        problems[name] = what
    if not (pdir / layout.DOMAIN_XML).is_file():
        problems["domain.xml"] = "missing"
    for rec in m.disks:
        path = layout.disk_path(pdir, rec.file)
        if not path.is_file():
            problems[rec.target] = "missing"
            continue
        if path.stat().st_size != rec.logical_size:
            problems[rec.target] = f"size {path.stat().st_size} != recorded {rec.logical_size}"
            continue
        try:
            inf = qemuimg.info(path, force_share=True, fmt=rec.format)
        except (VmBackupError, ValueError, KeyError) as e:
            problems[rec.target] = f"unreadable: {e}"
            continue
        if inf.format != rec.format or inf.virtual_size != rec.virtual_size or inf.backing_file:
            problems[rec.target] = (
                f"image is {inf.format} {inf.virtual_size} B backing={inf.backing_file}, "
                f"recorded {rec.format} {rec.virtual_size} B"
            )
    if not m.disks:
        problems["disks"] = "the manifest lists no disks"
    if problems:
        text = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise PointCorrupt(f"point {point.point_id} is damaged: {text}", details={"problems": problems})


def _targets(point: RecoveryPoint) -> str:
    """Comma-separated stored targets."""
    return ", ".join(d.target for d in point.manifest.disks) or "none"
