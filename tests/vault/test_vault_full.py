"""A vault that fills up during a copy: a typed VAULT_FULL, and no partial point left behind.

The vault lives on a real 16 MiB tmpfs (root only), so the ENOSPC comes from the kernel, for both copy paths:
the sparse copy (a raw disk) and qemu-img convert (a disk with a backing file).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.vault import Vault
from controller.vault.exceptions import VaultFull
from tests.vault.helpers import MiB, qemu_io_write, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as the vault")


@pytest.fixture
def small_vault(tmp_path: Path) -> Iterator[Vault]:
    """A vault on a 16 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield Vault(mnt / "vault")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _leftovers(vault: Vault, vm: str) -> list[str]:
    """Everything under the VM's vault directory (a failed point must leave nothing)."""
    d = vault.root / vm
    return sorted(os.listdir(d)) if d.exists() else []


@pytest.mark.parametrize("backed", [False, True], ids=["sparse-copy", "qemu-img-convert"])
def test_enospc_mid_copy_is_vault_full_and_leaves_no_partial(small_vault: Vault, tmp_path: Path, backed: bool) -> None:
    """48 MiB of data into a 16 MiB vault: VAULT_FULL naming the disk, and the .tmp- point is gone."""
    vm = str(uuid.uuid4())
    if backed:
        base = tmp_path / "base.qcow2"
        run("qemu-img", "create", "-f", "qcow2", str(base), "64M")
        qemu_io_write(base, "qcow2", 0x5A, 0, 48 * MiB)
        src = tmp_path / "top.qcow2"
        run("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(src))
        fmt = "qcow2"
    else:
        src = tmp_path / "disk.raw"
        with open(src, "wb") as f:
            f.write(os.urandom(48 * MiB))
        fmt = "raw"
    writer = small_vault.new_point(vm)
    with pytest.raises(VaultFull) as ei:
        writer.copy_disk("vda", src, fmt=fmt)
    writer.abort()
    assert "vda" in ei.value.message
    assert "prune" in ei.value.remediation
    assert [e for e in _leftovers(small_vault, vm) if e.startswith(".tmp-")] == []


def test_space_check_refuses_before_any_copy(small_vault: Vault, tmp_path: Path) -> None:
    """The backup's precheck: a point needing more than the free space is VAULT_FULL with both numbers."""
    Vault(tmp_path / "roomy").check_space(1 * MiB)  # fits where there is room
    with pytest.raises(VaultFull) as ei:
        small_vault.check_space(64 * MiB)
    assert ei.value.details["required_bytes"] == 64 * MiB
    assert ei.value.details["free_bytes"] <= 16 * MiB
