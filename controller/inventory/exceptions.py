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
