"""Small disk helpers: loop devices, mounts, free space, qcow2 sizes, ext4 data disks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from controller.lab.exceptions import ImageBuildFailed, InsufficientSpace
from controller.lab.proc import run


def require_free_space(directory: Path, needed: int, purpose: str) -> None:
    """Raise InsufficientSpace unless the filesystem holding directory has `needed` bytes free."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise InsufficientSpace(
            f"{purpose} needs {needed / 2**30:.1f} GiB free in {probe}, only {free / 2**30:.1f} GiB is",
            details={"path": str(probe), "needed": needed, "free": free},
        )


def virtual_size(path: Path) -> int:
    """The virtual size of an image in bytes (qemu-img info -U, safe while a VM uses it)."""
    out = run(["qemu-img", "info", "-U", "--output=json", str(path)], what="qemu-img info")
    return int(json.loads(out)["virtual-size"])


def allocated_bytes(path: Path) -> int:
    """The bytes the file really occupies on disk."""
    return os.stat(path).st_blocks * 512


@contextlib.contextmanager
def loop_device(raw: Path) -> Iterator[tuple[str, str]]:
    """Attach raw to a loop device with partitions; yield (loop, first partition); always detach."""
    loop = run(["losetup", "-P", "-f", "--show", str(raw)], error=ImageBuildFailed, what="losetup").strip()
    part = f"{loop}p1"
    try:
        for _ in range(20):
            if os.path.exists(part):
                break
            time.sleep(0.1)
        if not os.path.exists(part):  # losetup -P does not always create the node here; partx -a does
            run(["partx", "-a", loop], error=ImageBuildFailed, what="partx -a")
        for _ in range(20):
            if os.path.exists(part):
                break
            time.sleep(0.1)
        if not os.path.exists(part):
            raise ImageBuildFailed(f"partition node {part} never appeared")
        yield loop, part
    finally:
        with contextlib.suppress(Exception):
            run(["partx", "-d", loop], what="partx -d")
        with contextlib.suppress(Exception):
            run(["losetup", "-d", loop], what="losetup -d")


@contextlib.contextmanager
def mounted(device: str, target: Path, *opts: str) -> Iterator[None]:
    """Mount device on target for the block; always unmount."""
    run(["mount", *opts, device, str(target)], error=ImageBuildFailed, what=f"mount {device}")
    try:
        yield
    finally:
        run(["umount", str(target)], error=ImageBuildFailed, what=f"umount {target}")


def make_data_disk(path: Path, size_bytes: int, label: str) -> None:
    """A qcow2 at path holding a fresh ext4 labelled `label` (mkfs on a sparse raw file, then convert)."""
    raw = path.with_name(path.name + ".raw")
    try:
        with open(raw, "wb") as f:
            f.truncate(size_bytes)
        run(
            ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1", str(raw)],
            what="mkfs.ext4",
        )
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], what="qemu-img convert")
    finally:
        raw.unlink(missing_ok=True)


def make_overlay(base: Path, path: Path, size_bytes: int | None = None) -> None:
    """A qcow2 overlay at path on the read-only base (optionally with a bigger virtual size)."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)]
    if size_bytes:
        cmd.append(str(size_bytes))
    run(cmd, what="qemu-img create")
