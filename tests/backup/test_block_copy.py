"""Copying a block device into a point (host only, a loop device): its size comes from seeking to the end (st_size
is 0) and a device without SEEK_DATA support is read whole, zero chunks staying holes in the vault."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backup.disksource import allocated, is_block_device, source_size
from controller.vault import sparse
from controller.vault.vault import Vault
from controller.virt.domain import Disk

MiB = 2**20


@pytest.fixture
def loop_dev(tmp_path: Path) -> Iterator[str]:
    """A 16 MiB loop device holding 'vmbackup' at 5 MiB; detached after."""
    img = tmp_path / "dev.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(5 * MiB)
        f.write(b"vmbackup")
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True)
    path = dev.stdout.strip()
    try:
        yield path
    finally:
        subprocess.run(["losetup", "-d", path], check=False)


def test_block_device_copied_whole_and_sparse(loop_dev: str, tmp_path: Path) -> None:
    assert is_block_device(loop_dev)
    assert source_size(loop_dev) == 16 * MiB
    assert allocated(Disk("vdb", loop_dev, "raw", kind="block")) == 16 * MiB
    writer = Vault(tmp_path / "vault").new_point(str(uuid.uuid4()))
    rec = writer.copy_disk("vdb", loop_dev, fmt="raw")
    stored = writer.tmp / rec.file
    assert rec.logical_size == rec.virtual_size == 16 * MiB
    assert stored.stat().st_size == 16 * MiB and stored.stat().st_blocks * 512 < 1 * MiB
    assert sparse.stream(stored).digest == rec.digest
    with open(stored, "rb") as f:
        f.seek(5 * MiB)
        assert f.read(8) == b"vmbackup"
    writer.abort()
