"""Errors of the lab layer: host preparation, image build and lab VMs."""

from __future__ import annotations

from controller.errors import VmBackupError


class LabError(VmBackupError):
    """Base of the lab errors."""

    code = "LAB_ERROR"
    operation = "lab"
    remediation = "See the message; `vmbackup lab list` shows the lab VMs this host has."


class VirtTypeInvalid(LabError):
    code = "LAB_VIRT_TYPE_INVALID"
    remediation = "Set VMBACKUP_VIRT_TYPE (or settings.virt_type) to one of: kvm, qemu, auto."


class DaemonStartFailed(LabError):
    code = "LAB_DAEMON_START_FAILED"
    remediation = "Run `bash scripts/host-setup.sh` as root and read its output; check /var/log/libvirt/."


class ImageBuildFailed(LabError):
    code = "LAB_IMAGE_BUILD_FAILED"
    remediation = (
        "Read the failing command's output in the message details; check the apt mirror in "
        "/etc/apt/sources.list* is reachable and there is free space, then run `vmbackup lab image` again."
    )


class ImageMissing(LabError):
    code = "LAB_IMAGE_MISSING"
    remediation = "Build it first: `vmbackup lab image`."


class LabNameInvalid(LabError):
    code = "LAB_NAME_INVALID"
    remediation = "Use 1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit."


class LabVmExists(LabError):
    code = "LAB_VM_EXISTS"
    remediation = "Pick another name, or remove the old one with `vmbackup lab destroy NAME`."


class LabVmNotFound(LabError):
    code = "LAB_VM_NOT_FOUND"
    remediation = "`vmbackup lab list` shows the lab VMs that exist."


class NotALabVm(LabError):
    code = "LAB_NOT_A_LAB_VM"
    remediation = "This domain was not created by `vmbackup lab create`; manage it with virsh instead."


class InsufficientSpace(LabError):
    code = "LAB_INSUFFICIENT_SPACE"
    remediation = "Free disk space where VMBACKUP_HOME lives, or ask for smaller disks."


class LabPathNotAccessible(LabError):
    code = "LAB_PATH_NOT_ACCESSIBLE"
    remediation = (
        "QEMU runs as libvirt-qemu and must be able to traverse every parent directory of the VM files: "
        "use a VMBACKUP_HOME outside private dirs (e.g. /var/tmp/...) or chmod o+x the parents."
    )


class LabSshTimeout(LabError):
    code = "LAB_SSH_TIMEOUT"
    remediation = (
        "The VM did not answer on SSH in time; read its console log (path in the message) and retry."
    )


class LabCommandFailed(LabError):
    code = "LAB_COMMAND_FAILED"
    remediation = "A host tool (qemu-img, mkfs.ext4) failed; its stderr is in the message details."
