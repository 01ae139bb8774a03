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


class PointFromOtherVm(VmBackupError):
    """A replace-restore was asked to put one VM's recovery point into a different VM."""

    code = "POINT_FROM_OTHER_VM"
    operation = "restore"
    remediation = (
        "Pick a point of the target VM (`vmbackup points VM`), or restore this one beside it as a new VM "
        "(`vmbackup restore POINT --as NEW_NAME`). To really put another VM's disks into this VM, add --from-other-vm."
    )


class ConfirmationRequired(VmBackupError):
    """A replace-restore needs a yes, and there is no terminal to ask on."""

    code = "CONFIRMATION_REQUIRED"
    operation = "restore"
    remediation = (
        "Run it on a terminal to answer the question, or confirm up front with --yes "
        "(`vmbackup restore POINT --replace VM --yes`)."
    )


class RestoreDeclined(VmBackupError):
    """The user answered no to a replace-restore; nothing was changed."""

    code = "RESTORE_DECLINED"
    operation = "restore"
    remediation = "Nothing was changed. Run `vmbackup restore POINT --replace VM` again and answer yes, or add --yes."


class CheckCommandTimeout(VmBackupError):
    """A boot-check's --check-command did not exit within the time left; its SSH channel was closed."""

    code = "CHECK_COMMAND_TIMEOUT"
    operation = "boot-check"
    remediation = (
        "Make the command end on its own (e.g. prefix it with `timeout 60`), or give the boot-check more time "
        "(`vmbackup boot-check POINT --timeout S --check-command CMD`)."
    )


class InstantVmNotFound(VmBackupError):
    """`restore finish` was asked for a VM that is not an instant restore running on the vault."""

    code = "INSTANT_VM_NOT_FOUND"
    operation = "restore"
    remediation = "List the instant-restored VMs with `vmbackup restore list` and pass one of their names."


class InstantFinishFailed(VmBackupError):
    """Moving an instant-restored VM's storage out of the vault did not complete; the VM still runs on the vault."""

    code = "INSTANT_FINISH_FAILED"
    operation = "restore"
    remediation = (
        "The point stays pinned and the VM keeps working on its overlays. Fix what the message names (space in "
        "the pool directory, a block job already running), then run `vmbackup restore finish NAME` again."
    )
