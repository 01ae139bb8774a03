"""FIFREEZE / FITHAW on Linux filesystems, through ioctl on a descriptor of the mount point (no shelling out).

Safety rules: freeze in the planned order and keep each descriptor open until thaw; if any freeze fails,
thaw every filesystem already frozen (reverse order) before raising; thaw never raises per filesystem, it
records the error and goes on. Nothing here writes to disk or logs to a file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.exceptions import FreezeFailed
from agent.quiesce.mounts import Mount

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

#: The ioctl call, injectable so tests can force an error on a chosen filesystem.
IoctlFn = Callable[[int, int, int], object]


@dataclass
class FrozenFs:
    """A filesystem this process froze, with the open descriptor used to thaw it."""

    mount_point: str
    fd: int


class FsFreezer:
    """Freezes and thaws a list of mounts, holding the descriptors in between."""

    def __init__(self, ioctl: IoctlFn | None = None) -> None:
        self._ioctl: IoctlFn = ioctl or fcntl.ioctl
        self.frozen: list[FrozenFs] = []

    def freeze(self, plan: list[Mount]) -> tuple[list[str], list[tuple[str, str]]]:
        """Freeze ``plan`` in order; return (frozen, unsupported). Raise FreezeFailed after rollback."""
        if self.frozen:
            raise FreezeFailed("a freeze is already held by this freezer")
        skipped: list[tuple[str, str]] = []
        for mount in plan:
            fd = -1
            try:
                fd = _open_checked(mount)
                self._ioctl(fd, FIFREEZE, 0)
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    skipped.append((mount.mount_point, f"freezing not supported by {mount.fs_type}"))
                    continue
                undone = self.thaw()
                raise FreezeFailed(
                    f"freezing {mount.mount_point} ({mount.fs_type}) failed: {exc.strerror or exc}; "
                    f"thawed again: {[m for m, _ in undone[0]] or 'nothing'}"
                    + (f"; thaw errors: {undone[1]}" if undone[1] else "")
                ) from exc
            self.frozen.append(FrozenFs(mount.mount_point, fd))
        return [f.mount_point for f in self.frozen], skipped

    def thaw(self) -> tuple[list[tuple[str, int]], list[str]]:
        """Thaw everything held, in reverse freeze order: ([(mount point, ms to thaw)], [errors])."""
        thawed: list[tuple[str, int]] = []
        errors: list[str] = []
        while self.frozen:
            fs = self.frozen.pop()
            t0 = time.monotonic()
            try:
                self._ioctl(fs.fd, FITHAW, 0)
                thawed.append((fs.mount_point, int((time.monotonic() - t0) * 1000)))
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not frozen any more (someone else thawed it): already safe
                    thawed.append((fs.mount_point, 0))
                else:
                    errors.append(f"{fs.mount_point}: {exc.strerror or exc}")
            finally:
                os.close(fs.fd)
        return thawed, errors


def _open_checked(mount: Mount) -> int:
    """Open the mount point read-only and check it is still the filesystem the plan named."""
    fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (os.major(st.st_dev), os.minor(st.st_dev)) != mount.dev:
        os.close(fd)
        raise OSError(errno.ESTALE, f"{mount.mount_point} is no longer device {mount.dev[0]}:{mount.dev[1]}")
    return fd
