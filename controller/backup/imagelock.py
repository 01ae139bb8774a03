"""Hold QEMU's image locks on the disks of a VM that is not running while they are copied.

The vault copy reads the files itself, which takes no lock: a VM started mid-copy would write under it and leave a
torn point. ``held(disks)`` keeps one ``qemu-io -r`` process per disk with the image open read-only and without
force-share (-U), which takes QEMU's shared "consistent read" lock and refuses writers: a ``virsh start`` of the VM
fails with "Failed to get "write" lock" until the block ends. Usage::

    with imagelock.held(disks):          # ImageLockFailed if a QEMU process already has an image open for writing
        ...copy every disk...
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Iterator

from controller.backup.exceptions import ImageLockFailed
from controller.vault.qemuimg import die_with_parent
from controller.virt.domain import Disk

QEMU_IO = "qemu-io"
_PROMPT = b"qemu-io>"


def _open_one(d: Disk, timeout_s: float) -> subprocess.Popen[bytes]:
    """Start qemu-io on one image and wait for its prompt (the image is open and locked) or its failure."""
    proc = subprocess.Popen(
        [QEMU_IO, "-r", "-f", d.format, d.path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout_s
    while _PROMPT not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or (proc.poll() is not None and not select.select([proc.stdout], [], [], 0)[0]):
            break
        if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    if _PROMPT in seen:
        return proc
    _stop(proc)
    msg = seen.decode(errors="replace").strip() or "qemu-io did not open the image in time"
    raise ImageLockFailed(
        f"cannot lock disk {d.target} ({d.path}) for the copy: {msg}",
        details={"target": d.target, "path": d.path, "qemu_io": msg},
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End one qemu-io (closing its stdin makes it quit; kill it if it does not)."""
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


@contextlib.contextmanager
def held(ds: list[Disk], timeout_s: float = 30.0) -> Iterator[None]:
    """Hold a read lock on every disk image (and its backing chain) for the duration of the block."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for d in ds:
            procs.append(_open_one(d, timeout_s))
        yield
    finally:
        for p in procs:
            _stop(p)
