"""Offline filesystem checks on real (small) images built here with parted, mkfs.ext4 and debugfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.restore import fsck


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def test_partitioned_clean_ext4(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    _sh("truncate", "-s", "64M", str(raw))
    _sh("parted", "-s", str(raw), "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "40MiB")
    _sh("mkfs.ext4", "-q", "-E", "offset=1048576", str(raw), "39M")
    _sh("qemu-img", "convert", "-O", "qcow2", str(raw), str(tmp_path / "d.qcow2"))
    res = fsck.check_image(tmp_path / "d.qcow2", "qcow2", "vda", workdir=tmp_path)
    assert [(r.name, r.fstype, r.status) for r in res] == [("vda1", "ext4", "clean")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.qcow2", "d.raw"]  # temp files gone


def test_damaged_whole_disk_ext4_reports_errors(tmp_path: Path) -> None:
    raw = tmp_path / "fs.raw"
    _sh("truncate", "-s", "32M", str(raw))
    _sh("mkfs.ext4", "-q", str(raw))
    _sh("debugfs", "-w", "-R", "clri <2>", str(raw))  # wipe the root directory's inode
    res = fsck.check_image(raw, "raw", "vdb", workdir=tmp_path)
    assert len(res) == 1 and res[0].name == "vdb" and res[0].status == "errors" and not res[0].ok
    assert "e2fsck" in res[0].detail


def test_no_filesystem_is_skipped(tmp_path: Path) -> None:
    raw = tmp_path / "empty.raw"
    _sh("truncate", "-s", "8M", str(raw))
    res = fsck.check_image(raw, "raw", "vdc", workdir=tmp_path)
    assert [(r.status, r.ok) for r in res] == [("skipped", True)]


def test_the_checked_image_and_its_backing_are_never_written(tmp_path: Path) -> None:
    """The check reads through a throwaway overlay: an image and the file under it keep their bytes (sha256)."""
    import hashlib

    raw = tmp_path / "d.raw"
    _sh("truncate", "-s", "64M", str(raw))
    _sh("parted", "-s", str(raw), "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "40MiB")
    _sh("mkfs.ext4", "-q", "-E", "offset=1048576", str(raw), "39M")
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    _sh("qemu-img", "convert", "-O", "qcow2", str(raw), str(base))
    _sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    sums = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, top)}
    res = fsck.check_image(top, "qcow2", "vda", workdir=tmp_path)
    assert [(r.name, r.status) for r in res] == [("vda1", "clean")]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, top)} == sums
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2", "d.raw", "top.qcow2"]
