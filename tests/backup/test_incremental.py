"""Incremental-forever backups on a real (OS-less) QEMU domain: writes go through the running QEMU's own block layer
(HMP ``qemu-io`` on the disk's device), so the libvirt checkpoint's dirty bitmap marks them exactly as it marks a
guest's writes. Each point is compared with the VM's disk at the instant of the backup (the domain is paused for
the backup, so nothing changes between the snapshot and the comparison) by plain ``qemu-img compare`` over the
vault's backing chain: no vmbackup code reads the point.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from controller import db
from controller.backup import cbt
from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.vault import Vault
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm

MiB = 1 << 20
DISK = "/machine/peripheral/virtio-disk0/virtio-backend"


def guest_write(dom: libvirt.virDomain, offset: int, length: int, pattern: int) -> None:
    """Write through the running QEMU (the checkpoint's bitmap sees it like a guest write)."""
    cmd = f'qemu-io -d {DISK} "write -P {pattern} {offset} {length}"'
    out = libvirt_qemu.qemuMonitorCommand(dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert "error" not in out.lower(), out


def backup(settings: Any, vm: str, **kw: Any) -> BackupResult:
    """One backup of the (paused) domain."""
    eng = BackupEngine(settings)
    try:
        return eng.run(BackupRequest(vm=vm, freeze_timeout_s=5.0, **kw))
    finally:
        eng.close()


def compare(a: str, b: Path) -> subprocess.CompletedProcess[str]:
    """qemu-img compare of the live disk (force-share: QEMU holds it) with a vault point's disk and its chain."""
    return subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", a, str(b)], capture_output=True, text=True
    )


def paused_backup(settings: Any, t: Any, **kw: Any) -> tuple[BackupResult, Path]:
    """Pause, back up, compare the point with the disk as it is (unchanged since the snapshot), resume."""
    t.dom.suspend()
    try:
        res = backup(settings, t.name, **kw)
        point = Vault(settings.vault).get_point(res.point_id)
        stored = point.path / point.manifest.disks[0].file
        c = compare(t.base, stored)
        assert c.returncode == 0, f"point {res.point_id} ({res.point_type}) differs from the disk: {c.stdout}{c.stderr}"
    finally:
        t.dom.resume()
    return res, stored


def big_tiny(tiny: Any, size: str = "256M") -> Any:
    """A tiny domain with a bigger disk, registered without an agent, running."""
    t = tiny()
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", t.base, size], check=True)
    return t


def test_full_then_five_incrementals_each_restores_identically(settings: Any, tiny: Any, tmp_path: Path) -> None:
    t = big_tiny(tiny)
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 64 * MiB, 0x11)
    first, _ = paused_backup(settings, t)
    assert first.point_type == "full" and first.full_reason == "no previous point", first
    rng = random.Random(15)
    prev = first
    for i in range(1, 6):
        written = 0
        for _ in range(6):
            off = rng.randrange(0, 256 * MiB - 2 * MiB, 64 * 1024)
            n = rng.choice([64 * 1024, 512 * 1024, 2 * MiB])
            guest_write(t.dom, off, n, 0x20 + i)
            written += n
        res, stored = paused_backup(settings, t)
        assert res.point_type == "incremental" and res.parent == prev.point_id, res
        m = Vault(settings.vault).get_point(res.point_id).manifest
        assert m.chain_depth == i and m.checkpoint == cbt.checkpoint_name(res.job_id), m
        # changed bytes: at least what was written (overlaps aside), at most that plus 64 KiB rounding per run
        assert res.changed_bytes is not None and res.changed_bytes <= written + 6 * 2 * 64 * 1024, res
        assert res.changed_bytes >= 64 * 1024, res
        assert res.bytes_copied <= res.changed_bytes * 1.2 + 2 * MiB, res
        chain = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(stored)],
            capture_output=True, text=True, check=True).stdout)
        assert len(chain) == i + 1, [c["filename"] for c in chain]
        # only the newest checkpoint is left in libvirt
        assert cbt.ours(t.dom) == [m.checkpoint]
        prev = res

    # retention drops the chain's full: it is merged into the next point, and every other point still restores
    # exactly as before (compared with flat copies taken before the delete)
    vault = Vault(settings.vault)
    points = sorted(vault.list_points(t.uuid), key=lambda p: p.point_id)
    assert [p.manifest.type for p in points] == ["full"] + ["incremental"] * 5
    flat = {}
    for p in points[1:]:
        flat[p.point_id] = tmp_path / f"{p.point_id}.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(p.path / p.manifest.disks[0].file),
                        str(flat[p.point_id])], check=True)
    out = vault.delete_point(points[0])
    assert (out.action, out.into) == ("merged", points[1].point_id), out
    after = vault.get_point(points[1].point_id)
    assert after.manifest.type == "full" and after.manifest.parent is None, after.manifest
    for pid, copy in flat.items():
        p = vault.get_point(pid)
        c = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(copy),
                            str(p.path / p.manifest.disks[0].file)], capture_output=True, text=True)
        assert c.returncode == 0, f"{pid} changed by the merge: {c.stdout}{c.stderr}"
        assert vault.verify(p).ok, vault.verify(p).to_dict()
    # and the chain goes on over the merged point
    guest_write(t.dom, 0, 1 * MiB, 0x77)
    nxt, _ = paused_backup(settings, t)
    assert nxt.point_type == "incremental" and nxt.parent == prev.point_id, nxt


def test_chain_breaks_give_a_full_with_the_reason(settings: Any, tiny: Any) -> None:
    t = big_tiny(tiny, "64M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 8 * MiB, 0x31)
    paused_backup(settings, t)
    guest_write(t.dom, 0, 1 * MiB, 0x32)
    inc, _ = paused_backup(settings, t)
    assert inc.point_type == "incremental", inc

    forced, _ = paused_backup(settings, t, full=True)
    assert forced.point_type == "full" and forced.full_reason == "--full requested", forced
    assert forced.warnings == [] or all("full backup" not in w for w in forced.warnings), forced

    # a checkpoint deleted by hand
    (name,) = cbt.ours(t.dom)
    t.dom.checkpointLookupByName(name, 0).delete(0)
    guest_write(t.dom, 2 * MiB, 1 * MiB, 0x33)
    res, _ = paused_backup(settings, t)
    assert res.point_type == "full" and res.full_reason == f"checkpoint {name} missing in libvirt", res
    assert any("full backup instead of an incremental" in w for w in res.warnings), res

    # a resized disk
    t.dom.blockResize("vda", 96 * MiB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    res, _ = paused_backup(settings, t)
    assert res.point_type == "full" and "virtual size changed" in (res.full_reason or ""), res

    # a parent point that failed verification
    guest_write(t.dom, 0, 1 * MiB, 0x34)
    vault = Vault(settings.vault)
    vault.update_manifest(vault.get_point(res.point_id), verify={"ok": False, "at": "now", "errors": ["test"]})
    res2, _ = paused_backup(settings, t)
    assert res2.point_type == "full" and res2.full_reason == f"parent point {res.point_id} failed verification", res2

    # the VM's disks replaced (restore --replace and the like reset the chain)
    conn = db.connect(settings.db_path)
    try:
        cbt.reset_chain(conn, t.dom, t.uuid, "VM restored or replaced from point X")
    finally:
        conn.close()
    assert cbt.ours(t.dom) == []
    res3, _ = paused_backup(settings, t)
    assert res3.point_type == "full" and (res3.full_reason or "").startswith("VM restored or replaced"), res3
    # and the chain goes on from there
    guest_write(t.dom, 4 * MiB, 1 * MiB, 0x35)
    res4, _ = paused_backup(settings, t)
    assert res4.point_type == "incremental" and res4.parent == res3.point_id, res4


def test_policy_full_every_n_backups(settings: Any, tiny: Any) -> None:
    t = big_tiny(tiny, "32M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    types = []
    for i in range(5):
        guest_write(t.dom, i * MiB, 1 * MiB, 0x40 + i)
        res, _ = paused_backup(settings, t, full_every="3")
        types.append(res.point_type)
    assert types == ["full", "incremental", "incremental", "full", "incremental"], types


def test_shut_off_vm_carries_the_parents_checkpoint_on(settings: Any, tiny: Any) -> None:
    """libvirt cannot make a checkpoint of an inactive domain: the shut-off point is still an incremental (from
    the parent's bitmap, flushed into the image when QEMU stopped) and names the parent's checkpoint, which the
    next running backup copies from."""
    t = big_tiny(tiny, "64M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 8 * MiB, 0x51)
    first, _ = paused_backup(settings, t)
    t.dom.destroy()  # QEMU stops on SIGTERM and stores the persistent bitmaps
    w = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x52 16M 2M", t.base], capture_output=True, text=True)
    assert w.returncode == 0, w.stderr
    off = backup(settings, t.name)
    assert off.point_type == "incremental" and off.parent == first.point_id, off
    assert 2 * MiB <= (off.changed_bytes or 0) <= 3 * MiB, off
    vault = Vault(settings.vault)
    p_off = vault.get_point(off.point_id)
    assert p_off.manifest.checkpoint == vault.get_point(first.point_id).manifest.checkpoint
    c = compare(t.base, p_off.path / p_off.manifest.disks[0].file)
    assert c.returncode == 0, c.stdout + c.stderr

    t.dom.create()
    guest_write(t.dom, 32 * MiB, 1 * MiB, 0x53)
    on, _ = paused_backup(settings, t)
    assert on.point_type == "incremental" and on.parent == off.point_id, on
    # the carried checkpoint marked everything since `first`: the shut-off write is copied again (never missed)
    assert (on.changed_bytes or 0) >= 3 * MiB, on
    assert cbt.ours(t.dom) == [cbt.checkpoint_name(on.job_id)]


def test_qcow2_v2_disk_is_copied_full_and_says_how_to_fix(settings: Any, tiny: Any) -> None:
    """A qcow2 v2 (compat 0.10) image cannot hold a dirty bitmap: libvirt would refuse the checkpoint. Such a disk
    is left out of it and every backup of it is a full that names the fix."""
    t = tiny()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", t.base, "16M"], check=True)
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    guest_write(t.dom, 0, 1 * MiB, 0x61)
    first, _ = paused_backup(settings, t)
    guest_write(t.dom, 0, 1 * MiB, 0x62)
    second, _ = paused_backup(settings, t)
    for res in (first, second):
        assert res.point_type == "full" and res.full_reason == cbt.V2_REASON, res
    assert any("compat=1.1" in w for w in second.warnings), second.warnings
    assert cbt.ours(t.dom) == []
