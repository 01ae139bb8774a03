"""Deciding whether the process that owns a job is still alive, robust against pid reuse.

A job records its owner's pid and a *start marker*: ``<boot_id>:<starttime>`` where ``starttime`` is field 22
of ``/proc/<pid>/stat`` (clock ticks since boot). A pid reused by another process has another start time, and
after a reboot the boot id differs, so a recorded owner is alive only if both still match.
"""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    """This boot's id ('' where /proc does not provide it)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (process start time), or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has finished running: it owns nothing any more
        return None
    return fields[19]  # fields[0] is field 3 (state), so field 22 is index 19


def start_marker(pid: int | None = None) -> str:
    """The start marker of pid (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{_start_ticks(pid) or ''}"


def is_alive(pid: int | None, marker: str | None) -> bool:
    """True if process pid exists and is the same process that recorded marker."""
    if not pid:
        return False
    ticks = _start_ticks(pid)
    if ticks is None:
        return False
    if not marker:  # an old record without a marker: the pid existing is the best we know
        return True
    return marker == f"{_boot_id()}:{ticks}"
