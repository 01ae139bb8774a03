"""Open a recovery point for reading files: hold its chain, verify every stored byte it reads, start the appliance.

    with open_point(point_id, disk="vdb") as pf:      # POINT_NOT_FOUND, CHECKSUM_MISMATCH, CHAIN_BROKEN, ...
        pf.filesystems()                              # [Filesystem(name="vdb1", fstype="ext4", ...)]
        pf.ls("vdb1:/etc")                            # [Entry, ...]
        pf.get(["/etc/hostname"], Path("out"))        # GetResult (see extract.py)

A guest path is ``[FS:]/path``: FS names a filesystem (vda1, vdb, vg0/root); without it the guest's OS view is
used (its root and every mountpoint libguestfs' inspection finds), or the only filesystem there is.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from pathlib import Path

from controller.errors import InvalidArgument
from controller.filerestore import nbd
from controller.filerestore.appliance import Appliance, Entry, Filesystem, Progress
from controller.filerestore.extract import GetResult, extract
from controller.locks import flocked
from controller.vault import chain, keys, layout, merge
from controller.vault.copyout import verify_disk_chain
from controller.vault.exceptions import PointNotFound
from controller.vault.manifest import RecoveryPoint
from controller.vault.vault import Vault


def split_guest_path(spec: str) -> tuple[str | None, str]:
    """'vda1:/etc' -> ('vda1', '/etc'); '/etc' -> (None, '/etc'). The path is normalised and must be absolute
    (a '..' cannot climb above /); INVALID_ARGUMENT otherwise."""
    fs: str | None = None
    path = spec
    if not spec.startswith("/") and ":" in spec:
        fs, _, path = spec.partition(":")
    if not path.startswith("/") or "\0" in path or (fs is not None and not fs):
        raise InvalidArgument(f"guest path {spec!r} must be absolute: /path or FS:/path (e.g. vda1:/etc)")
    return fs, posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


class PointFiles:
    """A point opened for reading files (see the module docstring); made by open_point."""

    def __init__(self, point: RecoveryPoint, appliance: Appliance):
        self.point = point
        self.appliance = appliance

    def filesystems(self) -> list[Filesystem]:
        """The filesystems on the opened disks."""
        return self.appliance.filesystems()

    def stat(self, spec: str) -> Entry:
        """The entry at FS:/path."""
        fs, path = split_guest_path(spec)
        self.appliance.mount(fs)
        return self.appliance.lstat(path)

    def ls(self, spec: str) -> list[Entry]:
        """A directory's entries (or the entry itself when spec is not a directory)."""
        fs, path = split_guest_path(spec)
        self.appliance.mount(fs)
        ent = self.appliance.lstat(path)
        return self.appliance.ls(path) if ent.kind == "dir" else [ent]

    def get(self, specs: list[str], to: Path, progress: Progress | None = None) -> GetResult:
        """Copy the paths (files or whole directories) into `to` (new or empty), each under its own name."""
        parsed = [split_guest_path(s) for s in specs]
        return extract(self.appliance, parsed, to, progress)


def disks_to_read(point: RecoveryPoint, disk: str | None) -> list[str]:
    """The targets to attach: `disk` alone (POINT_NOT_FOUND if the point lacks it) or every disk."""
    targets = [d.target for d in point.manifest.disks]
    if disk is not None:
        if disk not in targets:
            raise PointNotFound(f"point {point.point_id} has no disk {disk!r} (it has {', '.join(targets)})")
        return [disk]
    return targets


@contextlib.contextmanager
def reading_chain(v: Vault, vm_uuid: str) -> Iterator[None]:
    """Hold the VM's chain still while it is read: a shared flock on the VM's vault directory (the lock merges,
    deletes and backups take exclusively, merge.chain_lock), so readers do not wait for each other. An interrupted
    merge is finished first, under the exclusive lock."""
    vd = layout.vm_dir(v.root, vm_uuid)
    while True:
        if merge.pending_merges(v, vm_uuid):
            with merge.chain_lock(v, vm_uuid):
                pass
        with flocked(vd, shared=True, directory=True):
            if not merge.pending_merges(v, vm_uuid):
                yield
                return


@contextlib.contextmanager
def open_point(
    point_id: str, disk: str | None = None, vault: Vault | None = None, progress: Progress | None = None
) -> Iterator[PointFiles]:
    """Hold the VM's chain still (no merge or delete meanwhile; reading_chain), verify the checksums of every
    stored file the disks read (their whole chain), then start the appliance with them read-only.
    progress(done, total) counts the bytes hashed."""
    v = vault or Vault()
    point = v.get_point(layout.check_point_id(point_id))
    with reading_chain(v, point.vm_uuid):
        point = v.get_point(point.point_id)  # re-read under the lock: a merge may have just finished
        targets = disks_to_read(point, disk)
        plain: dict[str, tuple[Path, str]] = {}
        encrypted: dict[str, nbd.Layers] = {}  # LUKS chains: exported decrypted over NBD (nbd.py)
        for t in targets:
            rec = point.manifest.disk(t)
            if rec is None or rec.format not in ("qcow2", "raw"):
                raise PointNotFound(f"point {point.point_id}: disk {t} is not a stored qcow2 or raw image")
            layers = [(v.disk_path(p, r), r.key_id) for p, r in reversed(chain.disk_chain(v, point, t))]
            keys.unlock_check(layers, f"disk {t} of point {point.point_id}")  # KEY_MISSING / KEY_WRONG first
            files = verify_disk_chain(v, point, t, progress)
            if any(kid for _, kid in layers):
                encrypted[t] = layers
            else:
                plain[t] = (files[-1][2], rec.format)
        with nbd.exports(encrypted) if encrypted else contextlib.nullcontext(Path()) as sock:
            drives = [(t, sock, nbd.NBD) if t in encrypted else (t, *plain[t]) for t in targets]
            app = Appliance(drives)
            app.launch()
            try:
                yield PointFiles(point, app)
            finally:
                app.close()
