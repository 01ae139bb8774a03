"""Helpers of the vault tests: run a command, write patterns with qemu-io, the naive stored-disk digest."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

from controller.vault import RecoveryPoint
from controller.vault.digest import CHUNK

MiB = 1 << 20


def run(*cmd: str) -> str:
    """Run a command, fail the test with its stderr if it fails."""
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


def reference_digest(path: Path) -> str:
    """The stored-disk checksum computed the naive way: every byte read in order, holes included."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(hashlib.sha256(chunk).digest())
    return f"sha256-4m:{h.hexdigest()}"


def qemu_io_write(path: Path, fmt: str, pattern: int, offset: int, length: int) -> None:
    """Write a byte pattern into an image through qemu-io."""
    run("qemu-io", "-f", fmt, "-c", f"write -P {pattern:#x} {offset} {length}", str(path))


#: The type of the ``make_point`` fixture.
PointMaker = Callable[..., RecoveryPoint]
