"""Errors of the byte mover."""

from __future__ import annotations

from controller.errors import VmBackupError


class SourceShrank(VmBackupError):
    """The file or device being copied or checksummed got shorter while it was read."""

    code = "SOURCE_SHRANK"
    operation = "copy"
    remediation = (
        "Something else changed the file or device while it was being copied (a VM or a tool still writing it, "
        "a volume resized). Stop that writer, then run the backup, restore or verify again."
    )


class NotQcow2(VmBackupError):
    """A file the data path was to treat as a qcow2 image is not one (nothing was changed)."""

    code = "NOT_QCOW2"
    operation = "vault write"
    remediation = (
        "Report this as a bug: the vault only compacts qcow2 images it has just written. The point was not "
        "published; run the backup again."
    )
