"""Errors of the libvirt layer, translated from libvirt's own messages."""

from __future__ import annotations

from controller.errors import VmBackupError


class HypervisorUnreachable(VmBackupError):
    code = "HYPERVISOR_UNREACHABLE"
    operation = "any"
    remediation = (
        "Check that libvirtd is running on that host (scripts/host-setup.sh starts it here) and that the URI is "
        "right, e.g. qemu:///system or qemu+ssh://user@host/system."
    )


class DomainNotFound(VmBackupError):
    code = "VM_NOT_FOUND"
    operation = "any"
    remediation = "Run `vmbackup discover` and use a name or UUID it lists."


class DomainBusy(VmBackupError):
    code = "OPERATION_IN_PROGRESS"
    operation = "any"
    remediation = "Another operation holds this VM; wait for it to finish (see `vmbackup jobs --vm NAME`)."


class HypervisorError(VmBackupError):
    code = "HYPERVISOR_ERROR"
    operation = "any"
    remediation = "libvirt refused the operation; the job details keep libvirt's own message. Fix what it names, retry."


class NoFreePort(VmBackupError):
    """No free forwarded host port on 127.0.0.1 (lab create, restore and boot-check forward guest ports)."""

    code = "LAB_NO_FREE_PORT"
    operation = "port allocation"
    remediation = "Too many forwarded ports are in use on 127.0.0.1; destroy unused lab VMs and retry."


class LabMetadataInvalid(VmBackupError):
    """A domain's vmblab metadata cannot be parsed (missing element, bad port)."""

    code = "LAB_METADATA_INVALID"
    operation = "any"
    remediation = (
        "The domain's lab metadata (namespace http://vmbackup.local/xmlns/lab/1) was edited by hand; put it back "
        "with `virsh edit VM` or drop the VM (`vmbackup lab destroy VM` for a lab VM)."
    )
