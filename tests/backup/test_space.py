"""The backup's size prediction (controller/backup/space.py) on a real OS-less QEMU domain (tests/backup/helpers.py):
known MiB written through the running QEMU (HMP qemu-io, so the checkpoint's bitmap sees them) or, shut off, with
qemu-io on the image (the persistent bitmap records them); the job's `space` detail is compared with what the point
then stored. A vault on a small tmpfs that cannot hold the predicted full is refused with VAULT_FULL before any
checkpoint, overlay or freeze, and leaves no partial point.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import db
from controller.backup import cbt, space
from controller.jobs.store import JobStore
from controller.vault import Vault
from controller.vault.exceptions import VaultFull
from tests.backup.test_incremental import MiB, backup, big_tiny, guest_write
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm

GRANULARITY = 64 * 1024  # the dirty bitmap's default granularity on these 64 KiB-cluster images


def _space(settings: Any, job_id: str) -> dict[str, Any]:
    """The job's `space` detail (the prediction made before the freeze)."""
    conn = db.connect(settings.db_path)
    try:
        detail: dict[str, Any] = JobStore(conn).get(job_id).details["space"]
        return detail
    finally:
        conn.close()


def test_predictions_match_what_the_points_store(settings: Any, tiny: Any) -> None:
    """Full: qemu-img measure of the disk, within 1 MiB of the stored qcow2. Incremental (paused, running QEMU):
    libvirt's checkpoint size, equal to the bitmap count the copy found and within one granularity per write of the
    bytes written. Shut off: the bitmap count through qemu-storage-daemon, equal to the point's changed bytes."""
    t = big_tiny(tiny, "128M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 24 * MiB, 0x11)
    t.dom.suspend()
    try:
        full = backup(settings, t.name, compression="none")  # compared with the stored bytes: no compression
    finally:
        t.dom.resume()
    sp = _space(settings, full.job_id)
    (d,) = sp["disks"]
    stored = Vault(settings.vault).get_point(full.point_id).manifest.disks[0].stored_bytes
    assert d["kind"] == "full" and d["source"] in ("qemu-img-measure", "allocated"), sp
    assert 24 * MiB <= d["bytes"] and abs(d["bytes"] - stored) <= MiB, (sp, stored)
    assert sp["fits"] and sp["margin_bytes"] == space.margin_for(_fs_size(settings.vault)), sp

    writes = [(3 * MiB, MiB), (40 * MiB + 4096, 2 * MiB), (100 * MiB, 512 * 1024)]
    for off, n in writes:
        guest_write(t.dom, off, n, 0x22)
    t.dom.suspend()
    try:
        inc = backup(settings, t.name, compression="none")
    finally:
        t.dom.resume()
    sp = _space(settings, inc.job_id)
    (d,) = sp["disks"]
    written = sum(n for _, n in writes)
    assert inc.point_type == "incremental" and (d["kind"], d["source"]) == ("incremental", "checkpoint-size"), sp
    assert d["bytes"] == inc.changed_bytes, (sp, inc)
    assert written <= d["bytes"] <= written + 2 * GRANULARITY * len(writes), (sp, written)
    assert sp["bytes"] == d["bytes"] and sp["ratio"] == 1.0

    t.dom.destroy()  # shut off: the bitmap is in the image now; qemu-io's writes are recorded in it
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x33 {8 * MiB} {5 * MiB}", t.base], check=True,
                   capture_output=True)  # fmt: skip
    off = backup(settings, t.name, compression="none")
    sp = _space(settings, off.job_id)
    (d,) = sp["disks"]
    assert off.point_type == "incremental" and (d["kind"], d["source"]) == ("incremental", "bitmap-count"), sp
    assert d["bytes"] == off.changed_bytes and 5 * MiB <= d["bytes"] <= 5 * MiB + 2 * GRANULARITY, (sp, off)


def _fs_size(path: Path) -> int:
    """Bytes of the filesystem holding path."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


@pytest.fixture
def small_vault(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the vault (unmounted afterwards)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_vault_full_before_any_freeze(settings: Any, tiny: Any, small_vault: Path) -> None:
    """40 MiB of data cannot fit a 16 MiB vault: VAULT_FULL from the precheck (running, not paused: QEMU has not
    written its fresh qcow2 metadata back, the allocated bytes still count them), with the prediction in its
    details; no checkpoint was made, no overlay, no freeze phase, nothing (not even a .tmp- directory) in the
    vault."""
    t = big_tiny(tiny, "64M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 40 * MiB, 0x44)
    small = dataclasses.replace(settings, vault=small_vault / "vault")
    before = sorted(p.name for p in Path(t.base).parent.iterdir())
    with pytest.raises(VaultFull) as e:
        backup(small, t.name)
    det = e.value.details
    assert det["bytes"] >= 40 * MiB and det["free_bytes"] < det["bytes"] + det["margin_bytes"], det
    assert det["margin_bytes"] == space.margin_for(16 * MiB) and "margin" in e.value.message
    assert cbt.ours(t.dom) == []  # no checkpoint made
    assert sorted(p.name for p in Path(t.base).parent.iterdir()) == before  # no overlay
    conn = db.connect(settings.db_path)
    try:
        (job,) = JobStore(conn).list(type="backup", vm=t.uuid)
        phases = [p.name for p in job.phases]
    finally:
        conn.close()
    assert job.state == "failed" and "freeze" not in phases and "checkpoint" not in phases, (job, phases)
    vault_dir = small_vault / "vault"
    assert not vault_dir.exists() or all(not list(d.iterdir()) for d in vault_dir.iterdir()), list(vault_dir.rglob("*"))
