"""Errors of the vault layer (recovery points on disk)."""

from __future__ import annotations

from controller.errors import InvalidArgument, VmBackupError


class VaultError(VmBackupError):
    """Base of the vault's errors."""

    code = "VAULT_ERROR"
    operation = "backup"
    remediation = (
        "Check that the vault directory (VMBACKUP_VAULT) exists, is writable and its disk is healthy."
    )


class PathEscape(VmBackupError):
    """A name or id would resolve to a path outside the vault."""

    code = "PATH_ESCAPE"
    operation = "any"
    remediation = (
        "Use the point ids `vmbackup points` prints; names may not contain '/', '..' or be absolute."
    )


class InvalidVaultId(InvalidArgument):
    """A VM uuid, point id or disk target does not match its strict pattern."""

    operation = "any"


class PointExists(InvalidArgument):
    """A new point would take the id of one that exists (published or being written) for that VM."""

    code = "POINT_EXISTS"
    operation = "backup"
    remediation = "Start the point without an id (a fresh one is made); `vmbackup points` lists the ids in use."


class DiskAlreadyStored(InvalidArgument):
    """A point being written was asked to store the same disk target twice."""

    code = "DISK_ALREADY_STORED"
    operation = "backup"
    remediation = "This is a bug: each disk target is copied into a point once (report it with the job's details)."


class InvalidConsistency(InvalidArgument):
    """A manifest names a consistency level that does not exist."""

    code = "INVALID_CONSISTENCY"
    operation = "backup"
    remediation = "Use one of the levels `vmbackup backup --help` lists (CRASH, FILE_SYSTEM, APPLICATION)."


class ManifestVmMismatch(InvalidArgument):
    """A manifest's VM uuid is not the VM the point is being written for."""

    code = "MANIFEST_VM_MISMATCH"
    operation = "backup"
    remediation = "This is a bug: the manifest's vm.uuid must be the point's VM (report it with the job's details)."


class ManifestFieldReadOnly(InvalidArgument):
    """A published point's manifest field outside the updatable ones (boot_check, verify, ...) was to change."""

    code = "MANIFEST_FIELD_READ_ONLY"
    operation = "any"
    remediation = "Only boot_check, verify, policy and consistency_reason change after publish; take a new backup."


class UnsupportedStoredFormat(InvalidArgument):
    """A disk was to be stored in a format the vault does not keep (only qcow2 and raw)."""

    code = "UNSUPPORTED_STORED_FORMAT"
    operation = "backup"
    remediation = "This is a bug: the vault stores disks as qcow2 or raw (report it with the job's details)."


class CopyOutTargetExists(InvalidArgument):
    """The file a disk was to be copied out to exists already (never overwritten)."""

    code = "COPY_OUT_TARGET_EXISTS"
    operation = "restore"
    remediation = "Pick an empty destination (`vmbackup restore POINT --disks-only --to DIR`) or move the file away."


class VaultFull(VmBackupError):
    """Not enough free space in the vault for the next recovery point."""

    code = "VAULT_FULL"
    operation = "backup"
    remediation = (
        "Free space in the vault: delete old points (`vmbackup prune` or retention), move VMBACKUP_VAULT "
        "to a larger filesystem, or grow it; then retry."
    )


class PointNotFound(VmBackupError):
    """No published recovery point has this id (or no disk with this target)."""

    code = "POINT_NOT_FOUND"
    operation = "restore"
    remediation = "List the recovery points with `vmbackup points [VM]` and use an id it prints."


class ManifestInvalid(VmBackupError):
    """A point's manifest.json is missing, unreadable or of an unknown format."""

    code = "MANIFEST_INVALID"
    operation = "verify"
    remediation = (
        "The point is damaged; run `vmbackup vault verify POINT`, then delete it and take a new backup."
    )


class ChecksumMismatch(VmBackupError):
    """A stored disk's content no longer matches the SHA-256 recorded at backup time."""

    code = "CHECKSUM_MISMATCH"
    operation = "restore"
    remediation = (
        "The stored disk is corrupt (storage fault or tampering): restore from another point "
        "(`vmbackup points VM`), run `vmbackup vault verify`, and check the vault's disk."
    )


class DiskCopyFailed(VmBackupError):
    """Copying or converting a disk into or out of the vault failed."""

    code = "DISK_COPY_FAILED"
    operation = "backup"
    remediation = "Check the source image (qemu-img info/check), free space and permissions (see details)."


class PointCorrupt(VmBackupError):
    """A quick pre-restore check found missing or damaged disks."""

    code = "POINT_CORRUPT"
    operation = "restore"
    remediation = (
        "Restore from another point (`vmbackup points VM`); run `vmbackup vault verify` for the full report."
    )


class ManifestIdMismatch(ManifestInvalid):
    """A point's manifest names another point id or VM uuid than the directories it sits in."""

    code = "MANIFEST_ID_MISMATCH"
    operation = "verify"
    remediation = (
        "The manifest was edited or the directory copied under another name: vmbackup neither uses nor deletes "
        "it by its manifest. Run `vmbackup vault verify` to list such points, then move the directory out of "
        "the vault by hand after checking it."
    )


class MetadataMismatch(VmBackupError):
    """manifest.json or domain.xml no longer matches the point's SHA256SUMS (corruption or a hand edit)."""

    code = "METADATA_MISMATCH"
    operation = "verify"
    remediation = (
        "Run `vmbackup vault verify POINT` to see which file changed; restore from another point "
        "(`vmbackup points VM`). vmbackup does not rewrite a point whose metadata does not match."
    )


class ChainBroken(VmBackupError):
    """An incremental point's chain misses a point it needs (its parent, or the parent's parent...)."""

    code = "CHAIN_BROKEN"
    operation = "restore"
    remediation = (
        "This point cannot be restored: a point it is built on is gone from the vault. Restore an older or newer "
        "point whose chain is whole (`vmbackup points VM`, `vmbackup vault verify`); the next backup is a full."
    )


class MergeFailed(VmBackupError):
    """Merging a point into its child (deleting a point another one depends on) could not finish."""

    code = "MERGE_FAILED"
    operation = "prune"
    remediation = (
        "The point is hidden (not listed, not restorable) and its child stays restorable. Fix the cause in the "
        "message (space, permissions, a missing file), then run `vmbackup prune` or `vmbackup vault delete POINT` "
        "again: the merge resumes from its intent file VAULT/<vm>/.merge-<point>.json."
    )


class ChainMismatch(VaultError):
    """An incremental disk does not fit the point it is to be built on (no such disk, another size, wrong backing)."""

    code = "CHAIN_MISMATCH"
    operation = "backup"
    remediation = (
        "The parent point does not match this disk (it lacks the disk, its size changed, or the written image does "
        "not name it as backing): take a full backup (`vmbackup backup VM --full`); report it if it repeats."
    )


class PointPinned(VmBackupError):
    """A point (or a point built on it) is in use by an instant-restored or boot-checked VM: it must not change."""

    code = "POINT_PINNED"
    operation = "prune"
    remediation = (
        "A VM runs on this point's files. Move its storage out of the vault first (`vmbackup restore finish NAME`), "
        "or remove that VM; `vmbackup restore list` shows which VMs pin which points."
    )


class PointProtected(VmBackupError):
    """A protected point (`vault protect`, or the policy's protect_newest), or a point a protected one is built on,
    was to be deleted, merged or pruned."""

    code = "POINT_PROTECTED"
    operation = "delete"
    remediation = (
        "The point is protected (`vmbackup points` marks it). Unprotect it first with `vmbackup vault unprotect "
        "POINT` (for a parent of a protected incremental: unprotect that point), or lower the policy's "
        "protect_newest; then retry."
    )


class PointDeleted(PointNotFound):
    """The point is soft-deleted: kept in the vault until it is purged, but not restorable, listed or prunable."""

    code = "POINT_DELETED"
    operation = "restore"
    remediation = (
        "Bring it back with `vmbackup vault undelete POINT` (before it is purged; `vmbackup points --deleted` lists "
        "soft-deleted points and when each is purged), or use another point."
    )


class UndeleteRefused(VmBackupError):
    """A soft-deleted point cannot be brought back: it was purged already (or is being purged), or is not deleted."""

    code = "UNDELETE_REFUSED"
    operation = "undelete"
    remediation = (
        "`vmbackup points --deleted` lists the points that can still be brought back; a purged point is gone for "
        "good: restore from another point (`vmbackup points VM`)."
    )
