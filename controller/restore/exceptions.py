"""Errors of restore and boot-check."""

from __future__ import annotations

from controller.errors import VmBackupError


class RestoreFailed(VmBackupError):
    """A restore could not be completed; whatever it had created was removed again."""

    code = "RESTORE_FAILED"
    operation = "restore"
    remediation = "Read the message and the job details (`vmbackup jobs`), fix what they name, then retry."


class VmNameExists(VmBackupError):
    """The name chosen for a restored VM is already used on that host."""

    code = "VM_NAME_EXISTS"
    operation = "restore"
    remediation = "Choose another name with --as NEW_NAME, or restore into the existing VM with --replace VM."


class VmRunning(VmBackupError):
    """A replace-restore was asked for a VM that is not shut off."""

    code = "VM_RUNNING"
    operation = "restore"
    remediation = "Shut the VM down first (`virsh shutdown NAME`, wait until it is shut off), then retry."


class RestoreTargetInvalid(VmBackupError):
    """The destination of a restore (a directory or the VM's disks) is not usable."""

    code = "RESTORE_TARGET_INVALID"
    operation = "restore"
    remediation = "Use an empty or new directory for --to/--pool-dir, and a VM whose disks match the point's."


class BootCheckFailed(VmBackupError):
    """A restored copy of the point did not come up cleanly (the reason names the failed check)."""

    code = "BOOT_CHECK_FAILED"
    operation = "boot-check"
    remediation = (
        "Do not rely on this point: the details list each check and the console tail. Try an older point "
        "(`vmbackup points VM`) or take a new backup; APPLICATION-consistent backups (agent registered) help."
    )
