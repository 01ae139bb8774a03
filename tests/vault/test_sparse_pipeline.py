"""The vault's copies through the datapath pipeline: a cancelled backup copy or restore leaves no partial file,
a restore verifies the checksum while reading, and the stored value is still the coreutils recipe's."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from controller.vault import Vault, sparse
from controller.vault.exceptions import ChecksumMismatch
from tests.vault.helpers import MiB, reference_digest


class Cancelled(Exception):
    """What the engine's progress callback raises when a job is cancelled."""


def _cancel_after(limit: int) -> sparse.Progress:
    """A progress callback that cancels once `limit` bytes are done."""

    def progress(done: int, _total: int) -> None:
        if done >= limit:
            raise Cancelled(f"cancelled at {done}")

    return progress


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 48 MiB + 7 B raw file: 40 MiB of random data after a 4 MiB hole, a short tail."""
    p = tmp_path / "disk.raw"
    with open(p, "wb") as f:
        f.truncate(48 * MiB + 7)
        f.seek(4 * MiB)
        f.write(os.urandom(40 * MiB))
    return p


def test_cancelled_backup_copy_leaves_no_file(vault: Vault, disk: Path) -> None:
    """PointWriter.copy_disk cancelled by its progress callback: the error propagates, the disks dir is empty."""
    w = vault.new_point(str(uuid.uuid4()))
    try:
        with pytest.raises(Cancelled):
            w.copy_disk("vda", disk, progress=_cancel_after(16 * MiB), fmt="raw")
        assert list((w.tmp / "disks").iterdir()) == []
    finally:
        w.abort()


def test_restore_copy_cancelled_or_mismatched_leaves_nothing(disk: Path, tmp_path: Path) -> None:
    """copy_verified: right checksum -> identical copy; cancelled or wrong checksum -> no file at dst."""
    good = reference_digest(disk)
    dst = tmp_path / "restored.raw"
    res = sparse.copy_verified(disk, dst, good, "vda")
    assert res.digest == good and dst.read_bytes() == disk.read_bytes()
    dst.unlink()
    with pytest.raises(Cancelled):
        sparse.copy_verified(disk, dst, good, "vda", progress=_cancel_after(20 * MiB))
    assert not dst.exists()
    with pytest.raises(ChecksumMismatch):
        sparse.copy_verified(disk, dst, "sha256-4m:" + "0" * 64, "vda")
    assert not dst.exists()


def test_stored_value_is_the_recipe_value(vault: Vault, disk: Path) -> None:
    """The digest recorded for a stored disk is what the coreutils one-liner computes on the stored file."""
    w = vault.new_point(str(uuid.uuid4()))
    try:
        rec = w.copy_disk("vda", disk, fmt="raw")
        stored = w.tmp / rec.file
        recipe = "split -b 4M --filter='sha256sum | cut -c1-64 | tr a-f A-F | basenc --base16 -d' \"$F\" | sha256sum"
        out = subprocess.run(["bash", "-c", recipe], env={**os.environ, "F": str(stored)}, capture_output=True,
                             text=True, check=True)
        assert rec.digest == "sha256-4m:" + out.stdout.split()[0] == reference_digest(disk)
        assert stored.stat().st_blocks * 512 < 44 * MiB  # the leading hole stayed a hole
    finally:
        w.abort()
