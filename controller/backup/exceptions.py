"""Errors of the backup engine."""

from __future__ import annotations

from controller.errors import VmBackupError


class NotRegistered(VmBackupError):
    code = "VM_NOT_REGISTERED"
    operation = "backup"
    remediation = "Register the VM first (`vmbackup register VM`): the agent is a prerequisite of a consistent backup."


class SnapshotFailed(VmBackupError):
    code = "SNAPSHOT_FAILED"
    operation = "backup"
    remediation = (
        "libvirt could not take the external snapshot; the VM was left on its original disks. Check free space next "
        "to the disk images and the job details for libvirt's message, then retry."
    )


class CommitFailed(VmBackupError):
    code = "COMMIT_FAILED"
    operation = "backup"
    remediation = (
        "The overlay could not be merged back; the VM still runs on it and no data is lost. Restart the controller "
        "(it retries the merge at start) or run `virsh blockcommit DOM DISK --active --pivot --shallow`."
    )


class ConsistencyNotMet(VmBackupError):
    code = "CONSISTENCY_NOT_MET"
    operation = "backup"
    remediation = (
        "The policy requires a higher consistency than was reached; the recovery point was kept. Check the agent "
        "(`vmbackup job show ID` says why it fell back) and the application hooks."
    )


class UnsupportedDisk(VmBackupError):
    """A device a backup cannot copy (network disk, filesystem share, passthrough); register and backup refuse it."""

    code = "UNSUPPORTED_DISK"
    operation = "backup"  # also raised by the register pre-check (controller/registration/precheck.py)
    remediation = (
        "Only qcow2/raw disks on files, block devices or storage-pool volumes can be backed up. Exclude the named "
        "devices by target in the VM's policy (`exclude_disks: [vdc]`, then `vmbackup policy create --file FILE "
        "--replace`; `vmbackup register` and `vmbackup backup` take `--exclude-disk vdc`), or detach them "
        "(`virsh detach-disk VM vdc --persistent`)."
    )



class OverlayInUse(VmBackupError):
    code = "OVERLAY_IN_USE"
    operation = "backup"
    remediation = (
        "A vmbackup overlay is still named by a domain definition (live or inactive), so it was kept: deleting it "
        "would lose the guest's writes. Run `vmbackup recover` to merge it back, or check `virsh dumpxml DOM` and "
        "`virsh dumpxml --inactive DOM` for the named file."
    )


class OfflineMergeFailed(VmBackupError):
    code = "OFFLINE_MERGE_FAILED"
    operation = "backup"
    remediation = (
        "The overlay of a shut-off VM could not be merged into its original disk; both files were kept and the VM "
        "definition still names the overlay, so no data is lost. Keep the VM shut off and run `vmbackup recover` "
        "again; `vmbackup job show ID` has qemu-img's message."
    )


class RemoteDataPathUnsupported(VmBackupError):
    code = "REMOTE_DATA_PATH_UNSUPPORTED"
    operation = "backup"
    remediation = (
        "The VM's libvirt host is another machine and its disk files are not readable here. Install vmbackup on "
        "that host and run `vmbackup backup VM` there (or `vmbackup host add` it on a controller running there)."
    )


class ImageLockFailed(VmBackupError):
    code = "IMAGE_LOCK_FAILED"
    operation = "backup"
    remediation = (
        "The disks of a VM that is not running could not be locked for the copy: the VM (or another QEMU process) "
        "opened them. Nothing was published; run `vmbackup backup VM` again (a running VM is backed up through a "
        "snapshot)."
    )


class StorageDaemonFailed(VmBackupError):
    """qemu-storage-daemon (the incremental copy's QEMU) failed, timed out or refused a QMP command."""

    code = "STORAGE_DAEMON_FAILED"
    operation = "backup"
    remediation = (
        "qemu-storage-daemon could not read the disk or its dirty bitmaps; nothing was published. Check that "
        "qemu-storage-daemon is installed (package qemu-system-common), the job details for QEMU's message, then "
        "run `vmbackup backup VM` again."
    )


class IncrementalCopyFailed(StorageDaemonFailed):
    """The ``blockdev-backup`` job that copies a disk's changed clusters failed, was cut off or timed out."""

    code = "INCREMENTAL_COPY_FAILED"
    remediation = (
        "The copy of the changed blocks failed (QEMU's message is in the job details; \"No space left on device\" "
        "means the vault is full: `vmbackup prune` or free space). Nothing was published and the chain is intact; "
        "run `vmbackup backup VM` again."
    )


class BitmapMissing(VmBackupError):
    """The dirty bitmap of the previous point's checkpoint is not in the disk image."""

    code = "BITMAP_MISSING"
    operation = "backup"
    remediation = (
        "The disk no longer carries the checkpoint's dirty bitmap (the checkpoint was deleted or the disk "
        "replaced), so the changes since the last point are unknown; the next backup of this disk is a full copy."
    )


class BitmapInconsistent(VmBackupError):
    """The dirty bitmap exists but QEMU marks it inconsistent (QEMU stopped without storing it)."""

    code = "BITMAP_INCONSISTENT"
    operation = "backup"
    remediation = (
        "QEMU marked the checkpoint's dirty bitmap inconsistent (the VM's QEMU stopped without saving it), so it "
        "cannot be trusted; the next backup of this disk is a full copy."
    )


class CheckpointFailed(VmBackupError):
    """libvirt refused to create the checkpoint (dirty bitmaps) an incremental chain needs."""

    code = "CHECKPOINT_FAILED"
    operation = "backup"
    remediation = (
        "libvirt could not create the checkpoint; the backup went on as a full and the VM was not changed. Check "
        "`virsh checkpoint-list VM` and the job details for libvirt's message (qcow2 disks are needed for bitmaps)."
    )
