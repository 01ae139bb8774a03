"""punch_zero_metadata: the zero pages of a qcow2's metadata go back to the filesystem, its bytes stay the same."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.datapath.exceptions import NotQcow2
from controller.datapath.qcow2holes import metadata_clusters, punch_zero_metadata

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"


def _sparse_overlay(tmp: Path) -> Path:
    """A 16 GiB qcow2 over a base with 1-3 MiB written in each 512 MiB region (one L2 table each): 32 L2 tables."""
    base, inc = tmp / "base.qcow2", tmp / "inc.qcow2"
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "16G"], check=True)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", str(inc)], check=True)
    rnd = random.Random(7)
    cmds: list[str] = []
    for i in range(32):
        cmds += ["-c", f"write -P {i + 1} {i * 512 + rnd.randrange(127) * 4}M {rnd.randint(1, 3)}M"]
    subprocess.run([QEMU_IO, "-f", "qcow2", *cmds, str(inc)], check=True, capture_output=True)
    return inc


def _allocated(p: Path) -> int:
    """Bytes the filesystem holds for p."""
    return p.stat().st_blocks * 512


def test_punching_frees_metadata_zeros_and_keeps_every_byte(tmp_path: Path) -> None:
    inc = _sparse_overlay(tmp_path)
    before_bytes, before_alloc = inc.read_bytes(), _allocated(inc)
    data = int(subprocess.run([QEMU_IMG, "info", "--output=json", str(inc)], capture_output=True, text=True,
                              check=True).stdout.split('"actual-size":')[1].split(",")[0])  # fmt: skip
    assert data == before_alloc  # sanity: qemu-img's actual-size is the allocation we measure
    freed = punch_zero_metadata(inc)
    after_alloc = _allocated(inc)
    assert inc.read_bytes() == before_bytes  # same content: holes read as zeros
    assert freed == before_alloc - after_alloc
    # the 32 L2 tables (64 KiB each) of a 16 GiB disk were written whole; most of each is zeros
    assert freed >= 32 * 48 * 1024, (before_alloc, after_alloc)
    check = subprocess.run([QEMU_IMG, "check", str(inc)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # the image still works as an image: writing more and reading it back
    subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0xaa 8G 1M", str(inc)], check=True, capture_output=True)
    r = subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "read -P 0xaa 8G 1M", str(inc)], capture_output=True, text=True,
                       check=True)  # fmt: skip
    assert "Pattern verification failed" not in r.stdout
    assert subprocess.run([QEMU_IMG, "check", str(inc)], capture_output=True, check=False).returncode == 0


def test_metadata_areas_are_inside_the_file(tmp_path: Path) -> None:
    inc = _sparse_overlay(tmp_path)
    fd = os.open(inc, os.O_RDONLY)
    try:
        areas = list(metadata_clusters(fd))
    finally:
        os.close(fd)
    size = inc.stat().st_size
    assert areas[0] == (0, 65536)
    assert all(0 <= off < size and length > 0 for off, length in areas)
    assert len(areas) >= 3 + 32  # header, L1, refcount table, >= 1 refcount block, 32 L2 tables


def test_not_a_qcow2_is_refused_untouched(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(1 << 20))
    with pytest.raises(NotQcow2):
        punch_zero_metadata(raw)
    assert _allocated(raw) >= 1 << 20
