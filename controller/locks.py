"""File locks between processes: one small ``flock`` helper for every lock vmbackup takes.

    with flocked(home / "ssh" / "known_vms.lock"):                 # exclusive, waits
        ...
    with flocked(point_dir, directory=True):                        # a directory's own inode
        ...
    with flocked(lock_path, blocking=False) as held:                # try once
        if not held:
            ...                                                     # another process holds it
    fd = open_fd(tmp_dir, directory=True); acquire(fd)              # held until os.close(fd)

A flock belongs to the open file description: closing the descriptor (or the process dying) releases it, so a lock
left by a crashed process never blocks anyone. Shared locks (``shared=True``) admit other shared holders only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def open_fd(path: Path, *, directory: bool = False, mode: int = 0o644) -> int:
    """A descriptor to lock: the directory itself (``directory``), else the file, created with ``mode`` if missing."""
    if directory:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    return os.open(path, os.O_RDWR | os.O_CREAT, mode)


def acquire(fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
    """flock ``fd``; True once held, False only when ``blocking`` is off and another holder has it."""
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, op if blocking else op | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def flocked(
    path: Path, *, shared: bool = False, blocking: bool = True, directory: bool = False, mode: int = 0o644
) -> Iterator[bool]:
    """Hold a flock on ``path`` for the block (see :func:`open_fd`); yields whether it is held (see :func:`acquire`).

    The descriptor is closed on exit, which releases the lock.
    """
    fd = open_fd(path, directory=directory, mode=mode)
    try:
        yield acquire(fd, shared=shared, blocking=blocking)
    finally:
        os.close(fd)
