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


#: (pattern, offset, length) writes; pattern None writes zero clusters (qemu-io write -z)
Writes = list[tuple[int | None, int, int]]


def qemu_io_apply(path: Path, writes: Writes) -> None:
    """Apply the writes to a qcow2 through qemu-io (one process)."""
    cmds: list[str] = []
    for pattern, offset, length in writes:
        cmds += ["-c", f"write -z {offset} {length}" if pattern is None else f"write -P {pattern:#x} {offset} {length}"]
    run("qemu-io", "-f", "qcow2", *cmds, str(path))


def incremental_write(writes: Writes) -> Callable[[Path, str], int]:
    """A stand-in for the byte mover: create dst as a qcow2 over `backing`, apply the writes, return their bytes."""

    def write(dst: Path, backing: str) -> int:
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(dst))
        qemu_io_apply(dst, writes)
        return sum(length for _, _, length in writes)

    return write


def images_identical(a: Path, b: Path) -> bool:
    """qemu-img compare of two qcow2 images (guest-visible content): True when identical."""
    p = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(a), str(b)], check=False)
    assert p.returncode in (0, 1), f"qemu-img compare {a} {b} failed (rc {p.returncode})"
    return p.returncode == 0
