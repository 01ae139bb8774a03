"""Copy-out for restore: stored disk -> destination file, with every stored byte it needs verified.

A self-contained disk is copied sparse with its SHA-256 verified while reading. An incremental disk (a qcow2 over
its parent point's copy) first has every file of its chain verified against its manifest, then is flattened with
``qemu-img convert`` into one standalone qcow2; so is a LUKS-encrypted disk (its chain opened with each layer's
vault key, controller/vault/keys.py): the restored copy is not encrypted. Either way the restored qcow2 loses
vmbackup's persistent dirty bitmaps (``vmb-*``): a stored copy of a live disk carries the source VM's checkpoints,
a restored VM starts anew.
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.errors import VmBackupError
from controller.vault import chain, digest, keys, layout, qemuimg, sparse, sums
from controller.vault.exceptions import (
    ChecksumMismatch,
    CopyOutTargetExists,
    DiskCopyFailed,
    PointCorrupt,
    PointNotFound,
)
from controller.vault.manifest import DiskRecord, RecoveryPoint, fsync_dir, read_manifest
from controller.vault.vault import Vault

#: persistent bitmaps vmbackup's checkpoints leave in a disk (removed from every restored qcow2)
BITMAP_PREFIX = "vmb-"


def copy_out_disk(
    point: RecoveryPoint,
    target: str,
    dest_path: str | Path,
    progress: sparse.Progress | None = None,
    vault: Vault | None = None,
    overwrite: bool = False,
) -> DiskRecord:
    """Copy one stored disk to dest_path (written as <dest>.part, renamed when every checksum matched).

    On a checksum mismatch nothing is left at dest_path (nor the .part) and CHECKSUM_MISMATCH names the point and
    disk; CHAIN_BROKEN when an incremental's chain misses a point. Returns the record of the written copy
    (source_path = the vault file; digest = the stored file's when the copy is byte-identical to it, else "").
    """
    v = vault or Vault(point.path.parent.parent)
    rec = point.manifest.disk(layout.check_target(target))
    if rec is None:
        raise PointNotFound(f"point {point.point_id} has no disk {target!r} (it has {_targets(point)})")
    src = v.disk_path(point, rec)
    if not src.is_file():
        raise PointCorrupt(f"point {point.point_id}: disk {target} is missing ({src})", details={"disk": target})
    dest = Path(dest_path)
    if dest.exists() and not overwrite:
        raise CopyOutTargetExists(f"destination {dest} already exists; refusing to overwrite it")
    part = dest.with_name(dest.name + ".part")
    try:
        if rec.backing or rec.key_id:  # a chain, or LUKS-encrypted: qemu-img writes a plain standalone qcow2
            _flatten_chain(v, point, target, part, progress)
            method, same = "qemu-img-convert", False
        else:
            sparse.copy_verified(src, part, rec.digest, target, progress)
            method, same = "sparse-copy", True
        if rec.format == "qcow2" and qemuimg.remove_bitmaps(part, BITMAP_PREFIX):
            same = False
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    fsync_dir(dest.parent)
    st = dest.stat()
    return DiskRecord(
        target=target,
        file=str(dest),
        format=rec.format,
        virtual_size=rec.virtual_size,
        logical_size=st.st_size,
        stored_bytes=st.st_blocks * 512,
        digest=rec.digest if same else "",
        source_path=str(src),
        method=method,
    )


def _flatten_chain(v: Vault, point: RecoveryPoint, target: str, part: Path, progress: sparse.Progress | None) -> None:
    """Verify every stored file `target`'s restore reads (CHECKSUM_MISMATCH naming the point and disk), then
    qemu-img convert the top one into part: a standalone, unencrypted qcow2. Progress covers both passes.

    Encrypted layers are opened with their vault keys (each layer its own key-secret); a key not held
    (KEY_MISSING) or not opening its layer (KEY_WRONG) is found before anything is read or written."""
    top = point.manifest.disk(target)
    extra = top.virtual_size if top else 0
    layers = [(v.disk_path(p, r), r.key_id) for p, r in reversed(chain.disk_chain(v, point, target))]
    what = f"disk {target} of point {point.point_id}"
    keys.unlock_check(layers, what)
    files = verify_disk_chain(v, point, target, progress, extra=extra)
    done = sum(r.logical_size for _, r, _ in files)
    total = done + extra

    def step(n: int, _total: int) -> None:
        """Report the convert's progress as part of the whole."""
        if progress:
            progress(min(total, done + n), total)

    try:
        qemuimg.convert(files[-1][2], part, step, fmt="qcow2", source=keys.image_source(layers))
    except DiskCopyFailed as e:
        raise keys.key_error(str(e.details.get("stderr", "")), what, [k for _, k in layers]) or e from e


def verify_disk_chain(
    v: Vault, point: RecoveryPoint, target: str, progress: sparse.Progress | None = None, extra: int = 0
) -> list[tuple[RecoveryPoint, DiskRecord, Path]]:
    """Hash every stored file a read of `target` from `point` needs (its chain, the self-contained file first)
    against its manifest: PointCorrupt when one is missing, CHECKSUM_MISMATCH naming the point and disk.

    Returns (point, record, path) per file, in chain order (open the last one: QEMU follows its backing files).
    progress(done, total) counts the bytes hashed; `extra` is added to total for a caller's later pass.
    """
    files = [(p, r, v.disk_path(p, r)) for p, r in chain.disk_chain(v, point, target)]
    total = sum(r.logical_size for _, r, _ in files) + extra
    done = 0

    def step(n: int, _total: int) -> None:
        """Report one file's progress as part of the whole."""
        if progress:
            progress(min(total, done + n), total)

    for p, r, path in files:
        if not path.is_file():
            raise PointCorrupt(
                f"point {p.point_id}: disk {target} is missing ({path}); point {point.point_id} is built on it",
                details={"disk": target, "point_id": p.point_id},
            )
        got = sparse.stream(path, progress=step, algo=digest.algo_of(r.digest))
        if got.digest != r.digest:
            raise ChecksumMismatch(
                f"disk {target} of point {p.point_id} (in the chain of {point.point_id}): stored file {path} has "
                f"checksum {got.digest[:26]}..., the manifest says {r.digest[:26]}...",
                details={
                    "disk": target,
                    "point_id": p.point_id,
                    "file": str(path),
                    "expected": r.digest,
                    "actual": got.digest,
                },
            )
        done += r.logical_size
    return files


def verify_point_quick(point: RecoveryPoint, vault: Vault | None = None) -> None:
    """Fail before a restore touches anything: manifest, domain.xml and every disk present and plausible.

    manifest.json and domain.xml must match SHA256SUMS (an older point without it passes that part).
    Each disk must have the recorded size, be a readable image of the recorded format and virtual size, and have
    no backing file, or (incremental) exactly the recorded one; every point of its chain must exist
    (CHAIN_BROKEN otherwise) with that disk's file of the recorded size. It does not hash (copy_out_disk does).
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
    by_id = chain.points_by_id(v, point.vm_uuid) if any(r.backing for r in m.disks) else {}
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
        backing_ok = (
            (inf.backing_name, inf.backing_format) == (rec.backing, "qcow2") if rec.backing else (not inf.backing_file)
        )
        if inf.format != rec.format or inf.virtual_size != rec.virtual_size or not backing_ok:
            problems[rec.target] = (
                f"image is {inf.format} {inf.virtual_size} B backing={inf.backing_name}, "
                f"recorded {rec.format} {rec.virtual_size} B backing={rec.backing}"
            )
        elif rec.backing:
            _quick_chain(v, RecoveryPoint(pdir, m), rec.target, by_id, problems)
    if not m.disks:
        problems["disks"] = "the manifest lists no disks"
    if problems:
        text = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise PointCorrupt(f"point {point.point_id} is damaged: {text}", details={"problems": problems})


def _quick_chain(
    v: Vault, point: RecoveryPoint, target: str, by_id: dict[str, RecoveryPoint], problems: dict[str, str]
) -> None:
    """The points `target` of `point` is built on exist (CHAIN_BROKEN raised) and hold its file at the recorded
    size (else a problem naming the point)."""
    for p, r in chain.disk_chain(v, point, target, by_id)[:-1]:
        path = v.disk_path(p, r)
        if not path.is_file() or path.stat().st_size != r.logical_size:
            what = "missing" if not path.is_file() else f"size {path.stat().st_size} != recorded {r.logical_size}"
            problems[target] = f"its file in point {p.point_id} is {what}"
            return


def _targets(point: RecoveryPoint) -> str:
    """Comma-separated stored targets."""
    return ", ".join(d.target for d in point.manifest.disks) or "none"
