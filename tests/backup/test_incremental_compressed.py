"""A compressed chain on a real (OS-less) QEMU domain (#17 item 1): the default compression (zstd) gives a full
stored as a zstd qcow2 with compressed clusters and an incremental written by blockdev-backup with compress: true;
both restore with plain ``qemu-img convert`` (no vmbackup code) to exactly the disk as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.vault import Vault
from tests.backup.test_incremental import MiB, big_tiny, guest_write, paused_backup
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm


def _compressed_pct(path: Path) -> float:
    """The percentage of compressed clusters `qemu-img check` reports for one file of the chain."""
    out = subprocess.run(["qemu-img", "check", "-U", "-f", "qcow2", str(path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if "compressed clusters" in ln)
    return float(line.split(",")[-1].strip().split("%")[0])


def test_full_and_incremental_compressed_restore_identically(settings: Any, tiny: Any, tmp_path: Path) -> None:
    t = big_tiny(tiny, "64M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    for i in range(16):  # 16 MiB of repetitive data: compresses to almost nothing
        guest_write(t.dom, i * MiB, MiB, 0x40 + i)
    full, fstored = paused_backup(settings, t)  # default: compression zstd
    vault = Vault(settings.vault)
    frec = vault.get_point(full.point_id).manifest.disks[0]
    assert (full.point_type, frec.compression, frec.format) == ("full", "zstd", "qcow2"), frec
    assert frec.stored_bytes < 4 * MiB and _compressed_pct(fstored) > 0.0, frec

    guest_write(t.dom, 40 * MiB, 2 * MiB, 0x5A)
    inc, istored = paused_backup(settings, t)  # compares the live disk with the point through its chain
    irec = vault.get_point(inc.point_id).manifest.disks[0]
    assert (inc.point_type, irec.kind, irec.compression) == ("incremental", "incremental", "zstd"), irec
    assert irec.changed_bytes is not None and irec.stored_bytes < irec.changed_bytes / 2, irec
    assert _compressed_pct(istored) > 0.0

    t.dom.suspend()  # the disk as it was at the incremental (nothing written since)
    try:
        flat = tmp_path / "restored.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(istored), str(flat)], check=True)
        c = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", t.base, str(flat)],
                           capture_output=True, text=True)  # fmt: skip
        assert c.returncode == 0, c.stdout + c.stderr
    finally:
        t.dom.resume()
    assert vault.verify(vault.get_point(inc.point_id)).ok
