"""Incremental backups of the session's real lab VM (TCG guest, agent over mTLS, real fsfreeze): a full, then
incrementals that carry only what the guest wrote; every point restores with plain qemu-img to exactly the disk
as it was (checked while the VM is paused), and the guest's files come back from an incremental point.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup import cbt
from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.vault import Vault
from controller.vault.copyout import copy_out_disk
from controller.virt.domain import disks
from tests.backup.test_backup_vm import ssh_ok

pytestmark = pytest.mark.vm

MiB = 1 << 20


def backup(settings: Any, vm: str, **kw: Any) -> BackupResult:
    """One backup of the lab VM through the engine."""
    eng = BackupEngine(settings)
    try:
        return eng.run(BackupRequest(vm=vm, **kw))
    finally:
        eng.close()


def test_guest_writes_travel_in_incrementals(registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path) -> None:
    dom = libvirt.open(settings.uri).lookupByName(lab_vm.name)
    full = backup(settings, lab_vm.name, full=True)
    assert full.point_type == "full" and full.full_reason == "--full requested", full

    # 24 MiB of new data in the guest: the next point is an incremental carrying about that much
    ssh_ok(lab_vm, "dd if=/dev/urandom of=/data1/inc1 bs=1M count=24 conv=fsync 2>/dev/null && sync")
    want1 = ssh_ok(lab_vm, "sha256sum /data1/inc1").split()[0]
    inc1 = backup(settings, lab_vm.name)
    print(f"\nincremental 1: {inc1.changed_bytes} changed bytes, {inc1.bytes_copied} stored, {inc1.duration_s:.1f} s, "
          f"consistency {inc1.consistency}, window {inc1.freeze_window_ms} ms (full: {full.bytes_copied} stored, "
          f"{full.duration_s:.1f} s)")
    assert inc1.point_type == "incremental" and inc1.parent == full.point_id, inc1
    assert inc1.consistency in ("FILE_SYSTEM", "APPLICATION"), inc1.consistency_reason
    assert inc1.changed_bytes is not None and 24 * MiB <= inc1.changed_bytes < 24 * MiB + 64 * MiB, inc1
    assert inc1.bytes_copied < full.bytes_copied / 4, (inc1.bytes_copied, full.bytes_copied)

    # the file comes back from the incremental point (its chain read by qemu-img)
    vault = Vault(settings.vault)
    point = vault.get_point(inc1.point_id)
    vdb = point.manifest.disk("vdb")
    assert vdb is not None and vdb.kind == "incremental" and vdb.backing, vdb
    assert vault.verify(point).ok
    restored = tmp_path / "vdb.qcow2"
    copy_out_disk(point, "vdb", restored, vault=vault)
    got = subprocess.run(["debugfs", "-R", "dump /inc1 /dev/stdout", str(_raw(restored, tmp_path))],
                         capture_output=True, check=True).stdout
    assert hashlib.sha256(got).hexdigest() == want1

    # another change, then a point taken while the guest is paused equals the live disks exactly
    ssh_ok(lab_vm, "dd if=/dev/urandom of=/data1/inc2 bs=1M count=4 conv=fsync 2>/dev/null && sync")
    dom.suspend()
    try:
        inc2 = backup(settings, lab_vm.name)
        assert inc2.point_type == "incremental" and inc2.parent == inc1.point_id, inc2
        p2 = vault.get_point(inc2.point_id)
        for d in disks(dom):
            rec = p2.manifest.disk(d.target)
            assert rec is not None
            c = subprocess.run(["qemu-img", "compare", "-U", "-f", d.format, "-F", rec.format, d.path,
                                str(vault.disk_path(p2, rec))], capture_output=True, text=True)
            assert c.returncode == 0, f"{d.target}: {c.stdout}{c.stderr}"
    finally:
        dom.resume()
    assert cbt.ours(dom) == [p2.manifest.checkpoint]


def _raw(image: Path, tmp: Path) -> Path:
    """A raw copy of a qcow2 image, for debugfs."""
    raw = tmp / (image.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    return raw
