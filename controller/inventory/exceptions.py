"""Errors of the inventory: hosts and the VM list."""

from __future__ import annotations

from controller.errors import InvalidArgument, VmBackupError


class HostNotFound(VmBackupError):
    """The URI is not a configured host."""

    code = "HOST_NOT_FOUND"
    operation = "discover"
    remediation = "Use a URI that `vmbackup host list` shows, or add it with `vmbackup host add URI`."


class InvalidHostUri(InvalidArgument):
    """The text is not a libvirt URI (same code as InvalidArgument: INVALID_ARGUMENT)."""

    operation = "discover"
    remediation = "Give a libvirt URI such as qemu:///system or qemu+ssh://root@host/system."


class UnknownVm(VmBackupError):
    """A command names a VM that is neither in the inventory nor in the vault (a typo, or not discovered yet)."""

    code = "UNKNOWN_VM"
    operation = "any"
    remediation = (
        "Use a name or UUID that `vmbackup vms` lists (run `vmbackup discover` first if the VM is new); "
        "`vmbackup points` lists the VMs that have points."
    )
