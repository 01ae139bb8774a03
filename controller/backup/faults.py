"""Fault-injection points for crash tests: make a controller process stop dead at a named step of a backup.

With ``VMBACKUP_FAULT_PAUSE_AT=<step>`` and ``VMBACKUP_FAULT_FILE=<path>`` set, ``checkpoint(step)`` writes the path
and then sleeps until the process is killed, so a test can SIGKILL the controller exactly there. Unset (always, in
production), ``checkpoint`` does nothing.
"""

from __future__ import annotations

import os
import time

STEPS = ("before-freeze", "while-frozen", "after-snapshot", "mid-copy", "before-commit")


def checkpoint(step: str) -> None:
    """Pause forever at `step` when a crash test asked for it."""
    if os.environ.get("VMBACKUP_FAULT_PAUSE_AT") != step:
        return
    marker = os.environ.get("VMBACKUP_FAULT_FILE")
    if marker:
        with open(marker, "w") as f:
            f.write(f"{os.getpid()} {step}\n")
    while True:
        time.sleep(3600)


def copy_throttle() -> None:
    """Slow the vault copy (``VMBACKUP_FAULT_COPY_DELAY_S`` seconds per progress report) so a test can cancel it."""
    delay = os.environ.get("VMBACKUP_FAULT_COPY_DELAY_S")
    if delay:
        time.sleep(float(delay))
