"""The vault copy at idle I/O priority: the guest's own disk I/O goes first.

A backup reads whole disk images while the guest keeps writing to its overlays on the same host disk. The freeze
benchmark attributes each backup's longest guest write stall (a writer fsyncing every 10 ms) to a job phase: in
every backup it fell in the copy, not around the freeze (bench/results/freeze-*). The copy therefore runs in the
idle I/O class (``ioprio_set(2)``, what ``ionice -c3`` sets): schedulers that honour it (mq-deadline, bfq) serve the
guest's requests first and give the copy the disk's idle time, with their aging so it is never starved for long.

The priority belongs to the calling thread and is inherited by the threads and processes it starts (the copy
pipeline's workers, qemu-img, qemu-storage-daemon). It is best effort: where the syscall is unknown or refused the
copy runs at its normal priority. Usage::

    with background() as lowered:          # lowered: whether the priority was changed
        ...copy...
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from collections.abc import Iterator

#: ioprio_set / ioprio_get syscall numbers per architecture (asm-generic for arm64 and riscv64).
_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "riscv64": (30, 31)}
_WHO_PROCESS = 1  #: IOPRIO_WHO_PROCESS with who 0: the calling thread
_CLASS_SHIFT = 13
IDLE = 3 << _CLASS_SHIFT  #: IOPRIO_CLASS_IDLE

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def background() -> Iterator[bool]:
    """Run the block with the calling thread in the idle I/O class, then restore its priority."""
    numbers = _SYSCALLS.get(platform.machine())
    old = _libc.syscall(numbers[1], _WHO_PROCESS, 0) if numbers else -1
    lowered = numbers is not None and old >= 0 and _libc.syscall(numbers[0], _WHO_PROCESS, 0, IDLE) == 0
    try:
        yield lowered
    finally:
        if lowered and numbers is not None:
            _libc.syscall(numbers[0], _WHO_PROCESS, 0, old)


def current() -> int:
    """The calling thread's I/O priority value (class << 13 | level), -1 where unknown."""
    numbers = _SYSCALLS.get(platform.machine())
    return int(_libc.syscall(numbers[1], _WHO_PROCESS, 0)) if numbers else -1


__all__ = ["IDLE", "background", "current"]
