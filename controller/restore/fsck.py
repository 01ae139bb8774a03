"""Offline filesystem checks of disk images (a restored copy, or an instant overlay over the vault), without kernel
block devices and without copying the disk.

Why this way: the host has no ``nbd`` module and no libguestfs, loop devices are kernel state a crash would leak,
and the host kernel must not parse a guest's filesystem. So each image gets a throwaway qcow2 overlay in a temp dir
(every write lands there: the image, and any vault file under it, are only read), and ``qemu-storage-daemon``
exports it as a plain file through FUSE: ``partx`` lists the partitions, ``blkid -p --offset --size`` probes each;
then each ext/xfs partition is exported on its own (a raw node with offset/size over the same overlay) and checked
in user space: ext2/3/4 with ``e2fsck -f -n`` (after replaying the journal into the throwaway overlay, so a VM that
was powered off hard is judged on its real metadata, not its journal), XFS with ``xfs_repair -n``. Only metadata
is read, so the cost follows the filesystem's metadata, not the disk's size or data. Other filesystems are reported
as skipped. The exports are unmounted and the temp files removed, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.vault import qemuimg

#: exit codes of e2fsck -n that mean "clean"
_E2FSCK_CLEAN = (0,)
QSD = "qemu-storage-daemon"
EXPORT_TIMEOUT_S = 20.0
CHECKERS = ("ext2", "ext3", "ext4", "xfs")


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
        scratch = tmp / "scratch.qcow2"
        p = _run([qemuimg.QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(image.resolve()), str(scratch)])
        if p.returncode != 0:
            return [FsCheck(target, "?", "failed", f"qemu-img create: {p.stderr.strip()}")]
        try:
            with fuse_exports(scratch, {"disk": None}, tmp) as files:
                raw = files["disk"]
                parts = partitions(raw) or [Partition(0, 0, raw.stat().st_size)]
                kinds = {pt.number: fstype(raw, pt) for pt in parts}
            names = {pt.number: f"{target}{pt.number}" if pt.number else target for pt in parts}
            out = [_skipped(names[pt.number], kinds[pt.number]) for pt in parts if kinds[pt.number] not in CHECKERS]
            todo = {names[pt.number]: pt for pt in parts if kinds[pt.number] in CHECKERS}
            if todo:
                with fuse_exports(scratch, todo, tmp) as files:
                    for name, pt in todo.items():
                        kind = kinds[pt.number]
                        out.append(_xfs(name, files[name]) if kind == "xfs" else _ext(name, kind, files[name]))
        except FsckExportFailed as e:
            return [FsCheck(target, "?", "failed", str(e))]
        return sorted(out, key=lambda c: c.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class FsckExportFailed(Exception):
    """qemu-storage-daemon could not export the image (internal to this module: becomes a failed FsCheck)."""


@contextlib.contextmanager
def fuse_exports(image: Path, ranges: Mapping[str, Partition | None], tmp: Path) -> Iterator[dict[str, Path]]:
    """Export the qcow2 `image` (writes land in it) through FUSE: name -> file of the whole disk (None) or of a
    byte range; one qemu-storage-daemon, stopped (and its mounts gone) on exit."""
    args = ["--blockdev", f"driver=file,filename={image},node-name=f", "--blockdev", "driver=qcow2,file=f,node-name=d"]
    files: dict[str, Path] = {}
    for i, (name, pt) in enumerate(ranges.items()):
        files[name] = tmp / f"{name}.raw"
        files[name].touch()
        node = "d"
        if pt is not None:
            node = f"p{i}"
            args += ["--blockdev", f"driver=raw,file=d,offset={pt.offset},size={pt.size},node-name={node}"]
        writable = "off" if pt is None else "on"  # a whole-disk export beside range nodes may not be resizable
        args += ["--export", f"type=fuse,id=e{i},node-name={node},mountpoint={files[name]},writable={writable}"]
    proc = subprocess.Popen([QSD, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=qemuimg.die_with_parent)
    try:
        deadline = time.monotonic() + EXPORT_TIMEOUT_S
        while not all(os.path.ismount(f) for f in files.values()):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else "timed out"
                raise FsckExportFailed(f"qemu-storage-daemon could not export {image.name}: {str(err).strip()}")
            time.sleep(0.05)
        yield files
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in files.values():  # a killed daemon leaves its mount behind
            if os.path.ismount(f):
                _run(["fusermount3", "-u", "-z", str(f)])


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


def _skipped(name: str, kind: str) -> FsCheck:
    """A range with no offline checker (or no filesystem at all)."""
    return FsCheck(name, kind or "none", "skipped", "no offline checker for this type" if kind else "no filesystem")


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
