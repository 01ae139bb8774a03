"""Offline filesystem checks of restored disk images, without kernel block devices.

Why this way: the host has no ``nbd`` module (``modprobe nbd`` fails) and no libguestfs, and loop devices are
kernel state a crash would leak. So each image is converted to a sparse raw temp file (``qemu-img convert``),
its partitions are listed with ``partx`` (which reads a regular file), each partition is probed with
``blkid -p --offset --size``, copied out sparse (``qemu-img convert`` with a raw offset/size view), and
checked: ext2/3/4 with ``e2fsck -f -n`` (after replaying the journal on the throwaway copy, so a VM that was
powered off hard is judged on its real metadata, not its journal), XFS with ``xfs_repair -n``. Other
filesystems are reported as skipped. The temp files are always removed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: exit codes of e2fsck -n that mean "clean"
_E2FSCK_CLEAN = (0,)


@dataclass
class FsCheck:
    """One filesystem's check: status clean | errors | skipped | failed."""

    name: str  # vda1, vdb (whole disk)
    fstype: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Clean or deliberately skipped."""
        return self.status in ("clean", "skipped")


@dataclass
class Partition:
    """A partition's byte range inside a raw image."""

    number: int
    offset: int
    size: int


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)


def check_image(image: Path, fmt: str, target: str, workdir: Path | None = None) -> list[FsCheck]:
    """Check every filesystem on one disk image (read only: the image itself is never written)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"vmb-fsck-{target}-", dir=workdir))
    try:
        raw = tmp / "disk.raw"
        p = _run(["qemu-img", "convert", "-f", fmt, "-O", "raw", "-U", str(image), str(raw)])
        if p.returncode != 0:
            return [FsCheck(target, "?", "failed", f"qemu-img convert: {p.stderr.strip()}")]
        parts = partitions(raw)
        if not parts:
            return [_check_range(raw, target, Partition(0, 0, raw.stat().st_size), tmp)]
        return [_check_range(raw, f"{target}{pt.number}", pt, tmp) for pt in parts]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def partitions(raw: Path) -> list[Partition]:
    """The partitions partx finds in a raw image file ([] when it has no partition table)."""
    p = _run(["partx", "--raw", "--noheadings", "-b", "-o", "NR,START,SECTORS", str(raw)])
    if p.returncode != 0:
        return []
    out: list[Partition] = []
    for line in p.stdout.split("\n"):
        f = line.split()
        if len(f) == 3 and all(x.isdigit() for x in f):
            out.append(Partition(int(f[0]), int(f[1]) * 512, int(f[2]) * 512))
    return out


def fstype(raw: Path, part: Partition) -> str:
    """The filesystem type blkid finds at a byte range ('' if none)."""
    p = _run(["blkid", "-p", "-O", str(part.offset), "-S", str(part.size), "-o", "export", str(raw)])
    for line in p.stdout.split("\n"):
        if line.startswith("TYPE="):
            return line[5:].strip()
    return ""


def _check_range(raw: Path, name: str, part: Partition, tmp: Path) -> FsCheck:
    """Probe one range and run the matching checker on a throwaway sparse copy of it."""
    kind = fstype(raw, part)
    if kind not in ("ext2", "ext3", "ext4", "xfs"):
        return FsCheck(name, kind or "none", "skipped", "no offline checker for this type" if kind else "no filesystem")
    piece = tmp / f"{name}.raw"
    opts = {
        "driver": "raw",
        "offset": part.offset,
        "size": part.size,
        "file": {"driver": "file", "filename": str(raw)},
    }
    p = _run(["qemu-img", "convert", "-O", "raw", "json:" + json.dumps(opts), str(piece)])
    if p.returncode != 0:
        return FsCheck(name, kind, "failed", f"qemu-img convert: {p.stderr.strip()}")
    try:
        return _xfs(name, piece) if kind == "xfs" else _ext(name, kind, piece)
    finally:
        piece.unlink(missing_ok=True)


def _ext(name: str, kind: str, piece: Path) -> FsCheck:
    """Replay the journal on the copy if needed, then e2fsck -f -n."""
    replay = _run(["e2fsck", "-E", "journal_only", "-y", str(piece)])
    p = _run(["e2fsck", "-f", "-n", str(piece)])
    tail = _tail(p.stdout + p.stderr)
    replayed = " (journal replayed on the copy first)" if "recovering journal" in replay.stdout.lower() else ""
    if p.returncode in _E2FSCK_CLEAN:
        return FsCheck(name, kind, "clean", f"e2fsck -f -n: clean{replayed}")
    return FsCheck(name, kind, "errors", f"e2fsck -f -n exit {p.returncode}{replayed}: {tail}")


def _xfs(name: str, piece: Path) -> FsCheck:
    """xfs_repair -n on the copy."""
    if shutil.which("xfs_repair") is None:
        return FsCheck(name, "xfs", "skipped", "xfs_repair is not installed")
    p = _run(["xfs_repair", "-n", "-f", str(piece)])
    if p.returncode == 0:
        return FsCheck(name, "xfs", "clean", "xfs_repair -n: clean")
    return FsCheck(name, "xfs", "errors", f"xfs_repair -n exit {p.returncode}: {_tail(p.stdout + p.stderr)}")


def _tail(text: str, lines: int = 6) -> str:
    """The last few lines of a tool's output, joined."""
    return " | ".join(x.strip() for x in text.strip().split("\n")[-lines:] if x.strip())
