"""Errors of file-level restore (`vmbackup files ls|get`)."""

from __future__ import annotations

from controller.errors import VmBackupError


class FileRestoreUnavailable(VmBackupError):
    """libguestfs is not installed, or its appliance does not start on this host."""

    code = "FILE_RESTORE_UNAVAILABLE"
    operation = "file-restore"
    remediation = (
        "Run scripts/host-setup.sh (installs python3-guestfs, libguestfs-tools and a kernel for the appliance), "
        "then check the appliance with `LIBGUESTFS_BACKEND=direct libguestfs-test-tool`."
    )


class FilesystemNotFound(VmBackupError):
    """The named filesystem is not on the point's disks, or the disks hold no filesystem that can be read."""

    code = "FILESYSTEM_NOT_FOUND"
    operation = "file-restore"
    remediation = "List the point's filesystems with `vmbackup files ls POINT` and name one as FS:/path (vda1:/etc)."


class FilesystemAmbiguous(VmBackupError):
    """A path without a filesystem name, on a point with several filesystems and no operating system found."""

    code = "FILESYSTEM_AMBIGUOUS"
    operation = "file-restore"
    remediation = "Name the filesystem in the path, FS:/path (e.g. vdb1:/data); `vmbackup files ls POINT` lists them."


class GuestPathNotFound(VmBackupError):
    """A path asked for does not exist in the point's filesystem."""

    code = "GUEST_PATH_NOT_FOUND"
    operation = "file-restore"
    remediation = "Check the path with `vmbackup files ls POINT DIR` (paths are absolute inside the filesystem)."


class FileRestoreTargetInvalid(VmBackupError):
    """The --to directory of `files get` is not an empty or new directory."""

    code = "FILE_RESTORE_TARGET_INVALID"
    operation = "file-restore"
    remediation = "Give --to a new or empty directory (files are never written over existing ones)."


class FileRestoreFailed(VmBackupError):
    """The appliance failed while reading the point (the message carries libguestfs' reason)."""

    code = "FILE_RESTORE_FAILED"
    operation = "file-restore"
    remediation = (
        "Read the message; verify the point (`vmbackup vault verify POINT`) and retry. A damaged filesystem may "
        "still be readable from an older point (`vmbackup points VM`)."
    )
