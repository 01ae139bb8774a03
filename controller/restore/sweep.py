"""Crash leftovers of boot-checks: a killed controller cannot clean up, so the next boot-check does.

Each running boot-check holds ``flock`` on ``$VMBACKUP_HOME/bootcheck/<name>.lock``. A ``vmb-bootcheck-*``
directory whose lock can be taken belongs to no live process: its domain and files are removed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import libvirt

from controller.locks import flocked
from controller.restore.undo import remove_domain


@contextlib.contextmanager
def hold(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on lock for the block (the file is removed afterwards)."""
    if not lock.parent.is_dir():  # the boot-check root: QEMU must pass through it (see restore.VM_DIR_MODE)
        lock.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        lock.parent.chmod(0o711)
    with flocked(lock, mode=0o600):
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def sweep(root: Path, conn: libvirt.virConnect, prefix: str) -> list[str]:
    """Remove boot-check VMs under root whose owner is gone; returns their names."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for d in sorted(root.iterdir()):
        if not d.name.startswith(prefix) or d.suffix == ".lock":
            continue
        with flocked(root / f"{d.name}.lock", blocking=False, mode=0o600) as held:
            if not held:
                continue  # a live boot-check owns it
            try:
                remove_domain(conn, d.name)
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
            finally:
                (root / f"{d.name}.lock").unlink(missing_ok=True)
    return removed
