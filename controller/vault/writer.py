"""PointWriter: builds one recovery point under a temporary name and publishes it by an atomic rename."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.contract import CONSISTENCY_LEVELS
from controller import locks
from controller.datapath import qcow2holes
from controller.errors import VmBackupError
from controller.vault import chain, compress, keys, layout, qemuimg, sparse, sums
from controller.vault.exceptions import (
    ChainMismatch,
    DiskAlreadyStored,
    DiskCopyFailed,
    InvalidConsistency,
    ManifestVmMismatch,
    PointExists,
    VaultError,
    VaultFull,
)
from controller.vault.manifest import (
    DiskRecord,
    Manifest,
    RecoveryPoint,
    fsync_dir,
    write_file_durable,
    write_manifest,
)

#: how qemu-img (strerror(ENOSPC)) says the destination filesystem is full
_NO_SPACE = "No space left on device"
#: write(dst, backing) -> changed bytes: creates dst as a qcow2 over `backing` and fills in the changed clusters
IncrementalWrite = Callable[[Path, str], int]


class PointWriter:
    """Builds one point in VAULT/<vm>/.tmp-<id>/ and publishes it by rename; abort() or a failure removes it.

    Usable as a context manager: leaving the block with an exception aborts the point.
    """

    def __init__(self, root: Path, vm_uuid: str, point_id: str):
        """Start the point under ``root``, the vault's directory (existing, resolved: ``Vault.new_point`` does)."""
        self.vm_uuid = vm_uuid
        self.point_id = layout.check_point_id(point_id)
        self.tmp = layout.tmp_point_dir(root, vm_uuid, point_id)
        self.final = layout.point_dir(root, vm_uuid, point_id)
        if self.final.exists() or self.tmp.exists():
            raise PointExists(f"recovery point {point_id} already exists for VM {vm_uuid}")
        if not self.tmp.parent.is_dir():
            self.tmp.parent.mkdir(mode=0o700)
            fsync_dir(root)  # the new VM directory's entry must survive a crash too
        (self.tmp / layout.DISKS_DIR).mkdir(mode=0o700, parents=True)
        # flock on the directory itself: remove_partials() skips a .tmp dir whose writer is alive.
        self._lock_fd = locks.open_fd(self.tmp, directory=True)
        locks.acquire(self._lock_fd)
        self.disks: list[DiskRecord] = []
        self.published: RecoveryPoint | None = None
        self._aborted = False
        self._parent: str | None = None  # the point the incremental disks are backed by
        #: the vault key new images of this point are LUKS-encrypted with (`vault encryption enable`), or None
        self.key: keys.VaultKey | None = keys.KeyStore().current()

    def __enter__(self) -> PointWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or self.published is None:
            self.abort()

    def copy_disk(
        self,
        target: str,
        src_path: str | Path,
        progress: sparse.Progress | None = None,
        force_share: bool = False,
        fmt: str | None = None,
        compression: str = "none",
    ) -> DiskRecord:
        """Store one disk self-contained: sparse copy when it has no backing file and is stored uncompressed,
        qemu-img convert (to a qcow2) otherwise.

        fmt is the source's format from the domain XML (qcow2/raw); None lets qemu-img probe it. force_share
        (-U) is only for images a VM still holds open for writing, which are not consistent: avoid it.
        compression "zstd" stores a compressed qcow2 (a raw source too) where sampling says it pays
        (controller/vault/compress.py); the record says what was done.
        """
        self._check_new_target(target)
        src = Path(src_path)
        inf = qemuimg.info(src, force_share, fmt)
        encrypt = self.key is not None  # a LUKS qcow2, written by qemu-img; never compressed (stored_compression)
        comp = compress.for_full_copy(qemuimg.stored_compression(compression, self.key), src)
        convert = comp != "none" or encrypt or bool(inf.backing_file) or inf.format not in ("qcow2", "raw")
        fmt = "qcow2" if convert or inf.format == "qcow2" else "raw"
        rel = layout.disk_file_name(target, fmt)
        dst = layout.inside(self.tmp, *rel.split("/"))
        with self._storing(target, str(src), dst):
            if convert:
                qemuimg.convert(src, dst, progress, force_share, inf.format, compression=comp, key=self.key)
                res = _hash_stored(dst)
                method = "qemu-img-convert"
            else:
                res = sparse.stream(src, dst, progress)
                method = "sparse-copy"
        rec = DiskRecord(
            target=target,
            file=rel,
            format=fmt,
            virtual_size=inf.virtual_size,
            logical_size=res.logical_size,
            stored_bytes=res.stored_bytes,
            digest=res.digest,
            source_path=str(src),
            method=method,
            compression=comp,
            key_id=self.key.key_id if self.key is not None else None,
        )
        self.disks.append(rec)
        return rec

    def add_incremental_disk(
        self,
        target: str,
        parent: RecoveryPoint,
        write: IncrementalWrite,
        source_path: str,
        virtual_size: int,
        method: str = "qsd-blockdev-backup",
    ) -> DiskRecord:
        """Store one disk as a qcow2 holding only the changed clusters, backed by `parent`'s copy of the disk.

        The writer picks the file (disks/<target>.qcow2) and its backing (chain.backing_name: relative, so it
        resolves the same from .tmp-<id>/ and <id>/); write(dst, backing) creates it and returns the changed bytes.
        CHAIN_MISMATCH before writing when the parent has no qcow2 of this disk or another virtual size, and after
        when the written file is not a qcow2 over exactly that backing.
        """
        self._check_new_target(target)
        prec = parent.manifest.disk(target)
        if parent.vm_uuid != self.vm_uuid or prec is None or prec.format != "qcow2":
            raise ChainMismatch(
                f"disk {target} cannot be stored as an incremental on point {parent.point_id}: that point "
                f"{'belongs to another VM' if parent.vm_uuid != self.vm_uuid else 'has no qcow2 copy of it'}",
                details={"target": target, "parent": parent.point_id},
            )
        if prec.virtual_size != virtual_size:
            raise ChainMismatch(
                f"disk {target} is {virtual_size} B, its copy in parent point {parent.point_id} is "
                f"{prec.virtual_size} B: an incremental needs the same size",
                details={"target": target, "parent": parent.point_id},
            )
        if self._parent is not None and self._parent != parent.point_id:
            raise ChainMismatch(f"point {self.point_id} already builds on {self._parent}, not {parent.point_id}")
        backing = chain.backing_name(parent.point_id, target)
        rel = layout.disk_file_name(target, "qcow2")
        dst = layout.inside(self.tmp, *rel.split("/"))
        with self._storing(target, source_path, dst):
            changed = write(dst, backing)
            qcow2holes.punch_zero_metadata(dst)  # the mostly-zero L2 tables of a sparse change set: ~1.5 % less
            inf = qemuimg.info(dst, fmt="qcow2")
            want = ("qcow2", backing, "qcow2", virtual_size)
            if (inf.format, inf.backing_name, inf.backing_format, inf.virtual_size) != want:
                raise ChainMismatch(
                    f"the incremental copy of disk {target} is a {inf.format} of {inf.virtual_size} B over "
                    f"{inf.backing_name!r} ({inf.backing_format}), expected a qcow2 of {virtual_size} B over "
                    f"{backing!r} (qcow2)",
                    details={"target": target, "backing": inf.backing_name, "expected": backing},
                )
            if inf.encrypted != (self.key is not None):
                raise VaultError(
                    f"the incremental copy of disk {target} is {'' if inf.encrypted else 'not '}encrypted, but "
                    f"encryption at rest is {'on' if self.key else 'off'} for this point (write() must pass writer.key)"
                )
            res = _hash_stored(dst)
        rec = DiskRecord(
            target=target,
            file=rel,
            format="qcow2",
            virtual_size=virtual_size,
            logical_size=res.logical_size,
            stored_bytes=res.stored_bytes,
            digest=res.digest,
            source_path=source_path,
            method=method,
            kind="incremental",
            backing=backing,
            changed_bytes=int(changed),
            compression=qemuimg.compression_of(inf),  # as write() created it
            key_id=self.key.key_id if self.key is not None else None,
        )
        self._parent = parent.point_id
        self.disks.append(rec)
        return rec

    def _check_new_target(self, target: str) -> None:
        """Refuse a closed point, a bad target name, or a target already stored in this point."""
        self._check_open()
        layout.check_target(target)
        if any(d.target == target for d in self.disks):
            raise DiskAlreadyStored(f"disk {target} is already stored in point {self.point_id}")

    @contextlib.contextmanager
    def _storing(self, target: str, src: str, dst: Path) -> Iterator[None]:
        """Around writing dst: any failure removes it; running out of space is VAULT_FULL, other I/O errors
        DISK_COPY_FAILED."""
        try:
            yield
        except OSError as e:
            dst.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise self._full(target, src) from e
            raise DiskCopyFailed(f"copying disk {target} from {src} failed: {e}") from e
        except VmBackupError as e:
            dst.unlink(missing_ok=True)
            if _NO_SPACE in f"{e.message} {e.details.get('stderr', '')}":
                raise self._full(target, src) from e
            raise
        except BaseException:
            dst.unlink(missing_ok=True)
            raise

    def _full(self, target: str, src: str | Path) -> VaultFull:
        """VAULT_FULL for a copy that ran out of space (another writer filled the vault after the space check)."""
        st = os.statvfs(self.tmp)
        return VaultFull(
            f"the vault filled up while copying disk {target} from {src}; the unfinished point was dropped",
            details={"target": target, "free_bytes": st.f_bavail * st.f_frsize},
        )

    def write_domain_xml(self, xml: str) -> None:
        """Store the domain XML as it was at backup time."""
        self._check_open()
        write_file_durable(self.tmp / layout.DOMAIN_XML, xml.encode())

    def publish(self, fields: dict[str, Any]) -> RecoveryPoint:
        """Write the manifest and SHA256SUMS, fsync everything, rename .tmp-<id> to <id>: the point becomes visible."""
        self._check_open()
        if not self.disks:
            raise VaultError(f"point {self.point_id} has no disks; nothing to publish")
        if not (self.tmp / layout.DOMAIN_XML).is_file():
            raise VaultError(f"point {self.point_id} has no domain.xml; call write_domain_xml first")
        m = self._manifest(fields)
        self._check_chain(m)
        write_manifest(self.tmp, m)
        sums.seal(self.tmp)  # SHA256SUMS: manifest.json + domain.xml
        fsync_dir(self.tmp / layout.DISKS_DIR)
        fsync_dir(self.tmp)
        os.rename(self.tmp, self.final)
        fsync_dir(self.final.parent)
        self.published = RecoveryPoint(self.final, m)
        self._unlock()
        return self.published

    def abort(self) -> None:
        """Drop the unpublished point (no-op after publish or a previous abort)."""
        if self.published is None and not self._aborted:
            self._aborted = True
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._unlock()

    def _unlock(self) -> None:
        """Release the directory lock (closing the fd drops the flock)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _check_open(self) -> None:
        """Refuse to touch a point that is already published or aborted."""
        if self.published is not None or self._aborted:
            raise VaultError(
                f"point {self.point_id} is already {'published' if self.published else 'aborted'}"
            )

    def _check_chain(self, m: Manifest) -> None:
        """CHAIN_MISMATCH unless an incremental point names its parent and every incremental disk is backed by it
        (and a full point names none)."""
        incr = [d for d in m.disks if d.kind == "incremental"]
        if not incr:
            if m.parent:
                raise ChainMismatch(f"point {self.point_id} has no incremental disk but names parent {m.parent}")
            return
        wrong = [d.target for d in incr if not m.parent or d.backing != chain.backing_name(m.parent, d.target)]
        if not m.parent or wrong:
            raise ChainMismatch(
                f"incremental point {self.point_id} names parent {m.parent!r}, but the backing of its disks "
                f"{', '.join(wrong)} does not name that point",
                details={"parent": m.parent, "disks": wrong},
            )

    def _manifest(self, f: dict[str, Any]) -> Manifest:
        """The manifest from the caller's fields (vm may be nested) plus what the writer knows."""
        vm = f.get("vm") or {}
        consistency = f.get("consistency")
        if consistency not in CONSISTENCY_LEVELS:
            raise InvalidConsistency(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, not {consistency!r}")
        uuid = layout.check_uuid(vm.get("uuid") or f.get("vm_uuid") or self.vm_uuid)
        if uuid != self.vm_uuid:
            raise ManifestVmMismatch(f"manifest VM uuid {uuid} does not match the point's VM {self.vm_uuid}")
        return Manifest(
            point_id=self.point_id,
            vm_uuid=uuid,
            vm_name=str(vm.get("name") or f.get("vm_name") or ""),
            host=str(vm.get("host") or f.get("host") or ""),
            created=str(f.get("created") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
            consistency=consistency,
            consistency_reason=str(f.get("consistency_reason") or ""),
            freeze_window_ms=f.get("freeze_window_ms"),
            guest_frozen_ms=f.get("guest_frozen_ms"),
            freeze_hooks_ms=f.get("freeze_hooks_ms"),
            thaw_hooks_ms=f.get("thaw_hooks_ms"),
            disks=list(self.disks),
            agent_version=f.get("agent_version"),
            quiescer=f.get("quiescer"),
            controller_version=f.get("controller_version"),
            policy=f.get("policy"),
            job_id=f.get("job_id"),
            boot_check=f.get("boot_check"),
            skipped=list(f.get("skipped") or []),
            type="incremental" if any(d.kind == "incremental" for d in self.disks) else "full",
            parent=f.get("parent"),
            checkpoint=f.get("checkpoint"),
            chain_depth=int(f.get("chain_depth") or 0),
            full_reason=f.get("full_reason"),
        )


def _hash_stored(dst: Path) -> sparse.StreamResult:
    """Checksum a file a tool wrote into the vault, with what it occupies there."""
    res = sparse.stream(dst)
    res.stored_bytes = dst.stat().st_blocks * 512
    return res
