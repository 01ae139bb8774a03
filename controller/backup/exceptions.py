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
        "--replace`; for `vmbackup register` pass `--exclude-disk vdc`), or detach them "
        "(`virsh detach-disk VM vdc --persistent`)."
    )

