"""Block-device and storage-pool-volume disks are backed up for real (running lab VM under TCG, real storage).

The VM gets two extra disks: vdb on a block device (an LVM logical volume on a loop device when the kernel has
device-mapper, else the loop device itself: both are ``type='block'``) and vdc on a volume of a libvirt ``dir``
pool (``type='volume'``). The guest writes random bytes to both, the backup runs, and the test checks that the
point holds exactly those bytes, that the VM writes to its original device and volume after the commit, and that
no overlay is left. The VM, the pool and the loop device (and VG) are removed in the finalizer, always.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import db
from controller.backup.disksource import overlay_dir
from controller.backup.engine import BackupEngine, BackupRequest
from controller.registration import store as regstore
from controller.vault.vault import Vault
from controller.virt.domain import disks
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm

MiB = 2**20
OFFSET_MIB, LENGTH_MIB = 1, 4  # the region the guest writes on each extra disk


@dataclass
class Storage:
    """The VM and the storage it was given."""

    vm: Any  # LabVmHandle
    dom: libvirt.virDomain
    block_dev: str  # /dev/<vg>/<lv> or /dev/loopN
    volume_path: str  # the pool volume's file
    pool_dir: Path


def _run(*cmd: str) -> str:
    """Run a host command that must succeed; its stdout."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _has_device_mapper() -> bool:
    """True when LVM can create logical volumes here (tools installed, kernel device-mapper present)."""
    return (
        bool(subprocess.run(["which", "lvcreate"], capture_output=True).returncode == 0)
        and os.path.exists("/dev/mapper/control")
        and subprocess.run(["dmsetup", "version"], capture_output=True).returncode == 0
    )


def _attach(dom: libvirt.virDomain, xml: str) -> None:
    """Hot-plug a disk into the running VM (live and persistent)."""
    dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)


@pytest.fixture
def storage_vm(settings: Any, make_lab_vm: Callable[..., Any], lab_prefix: str) -> Iterator[Storage]:
    """A lab VM with a block-device disk (vdb) and a dir-pool volume disk (vdc); everything removed after."""
    work = settings.home / f"blkvol-{os.getpid()}"
    work.mkdir(mode=0o755)
    os.chmod(settings.home, 0o755)
    backing = work / "loop.img"
    backing.touch()
    os.truncate(backing, 96 * MiB)
    loop = vg = ""
    lv = libvirt.open(settings.uri)
    pool: libvirt.virStoragePool | None = None
    vm = None
    try:
        loop = _run("losetup", "--find", "--show", str(backing))
        block_dev = loop
        if _has_device_mapper():
            vg = f"vmbt{os.getpid()}"
            _run("pvcreate", "-q", loop)
            _run("vgcreate", "-q", vg, loop)
            _run("lvcreate", "-q", "-y", "-L", "32M", "-n", "data", vg)
            block_dev = f"/dev/{vg}/data"
        pool_dir = work / "pool"
        pool_dir.mkdir(mode=0o755)
        pool = lv.storagePoolCreateXML(
            f"<pool type='dir'><name>{lab_prefix}pool</name><target><path>{pool_dir}</path></target></pool>", 0
        )
        vol = pool.createXML(
            "<volume><name>logs.qcow2</name><capacity unit='MiB'>32</capacity>"
            "<target><format type='qcow2'/><compat>1.1</compat></target></volume>",  # v3: can hold bitmaps
            0,
        )
        vm = make_lab_vm("blkvol")
        dom = lv.lookupByName(vm.name)
        _attach(
            dom,
            f"<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            f"<source dev='{block_dev}'/><target dev='vdb' bus='virtio'/><serial>vmbblk</serial></disk>",
        )
        _attach(
            dom,
            f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source pool='{pool.name()}' volume='logs.qcow2'/><target dev='vdc' bus='virtio'/>"
            f"<serial>vmbvol</serial></disk>",
        )
        register_without_agent(settings, dom.UUIDString(), dom.name())
        yield Storage(vm, dom, block_dev, vol.path(), pool_dir)
    finally:
        if vm is not None:
            with contextlib.suppress(Exception):
                regstore.delete(db.connect(settings.db_path), vm.uuid)
            vm.destroy()  # QEMU lets go of the loop device and the volume
        if pool is not None:
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
        lv.close()
        if vg:
            subprocess.run(["vgremove", "-q", "-f", vg], capture_output=True)
            subprocess.run(["pvremove", "-q", "-f", loop], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        work.rmdir()


def _guest_write(vm: Any, serial: str, pattern_file: str) -> str:
    """Write LENGTH_MIB random MiB at OFFSET_MIB of the disk with this serial, synced; sha256 of the bytes."""
    dev = f"/dev/disk/by-id/virtio-{serial}"
    cmd = (
        f"udevadm settle; test -b {dev} && dd if=/dev/urandom of={pattern_file} bs=1M count={LENGTH_MIB} 2>/dev/null"
        f" && dd if={pattern_file} of={dev} bs=1M seek={OFFSET_MIB} oflag=direct conv=fsync 2>/dev/null"
        f" && sync && sha256sum {pattern_file}"
    )
    rc, out, err = vm.ssh(cmd, timeout=120)
    assert rc == 0, f"guest write to {dev} failed: {err}"
    return out.split()[0]


def _region_sha(image: Path, fmt: str, tmp: Path) -> str:
    """sha256 of the written region of a stored disk (converted to raw first)."""
    raw = tmp / f"{image.name}.raw"
    _run("qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(raw))
    with open(raw, "rb") as f:
        f.seek(OFFSET_MIB * MiB)
        data = f.read(LENGTH_MIB * MiB)
    raw.unlink()
    return hashlib.sha256(data).hexdigest()


def test_block_and_volume_disks_backed_up(storage_vm: Storage, settings: Any, tmp_path: Path) -> None:
    s = storage_vm
    want = {"vdb": _guest_write(s.vm, "vmbblk", "/root/blk.bin"), "vdc": _guest_write(s.vm, "vmbvol", "/root/vol.bin")}

    r = BackupEngine(settings).run(BackupRequest(vm=s.vm.name))

    vault = Vault(settings.vault)
    point = vault.get_point(r.point_id)
    assert [d.target for d in point.manifest.disks] == ["vda", "vdb", "vdc"]
    assert vault.verify(point).ok
    for target, sha in want.items():
        rec = point.manifest.disk(target)
        assert rec is not None
        assert _region_sha(vault.disk_path(point, rec), rec.format, tmp_path) == sha, target
    vdb = point.manifest.disk("vdb")
    assert vdb is not None and vdb.virtual_size == int(_run("blockdev", "--getsize64", s.block_dev))

    # the VM runs on its original device and volume again, and writes reach them
    now = {d.target: (d.kind, d.path) for d in disks(s.dom)}
    assert now["vdb"] == ("block", s.block_dev)
    assert now["vdc"] == ("volume", s.volume_path)
    after = _guest_write(s.vm, "vmbblk", "/root/blk2.bin")
    with open(s.block_dev, "rb") as f:
        f.seek(OFFSET_MIB * MiB)
        assert hashlib.sha256(f.read(LENGTH_MIB * MiB)).hexdigest() == after
    leftovers = glob.glob(str(overlay_dir(settings.home, s.vm.uuid) / "*")) + glob.glob(str(s.pool_dir / "*.vmb-*"))
    assert leftovers == []

    # the next backup is an incremental: the qcow2 volume carries only its changes, the raw block device (no
    # dirty bitmap) is copied whole, and both hold the new data
    want2 = {"vdb": after, "vdc": _guest_write(s.vm, "vmbvol", "/root/vol2.bin")}
    r2 = BackupEngine(settings).run(BackupRequest(vm=s.vm.name))
    assert r2.point_type == "incremental" and r2.parent == r.point_id, (r2, r.warnings)
    p2 = vault.get_point(r2.point_id)
    vdb2, vdc2 = p2.manifest.disk("vdb"), p2.manifest.disk("vdc")
    assert vdb2 is not None and vdb2.kind == "full" and vdb2.full_reason == "raw disk: no dirty bitmap", vdb2
    assert vdc2 is not None and vdc2.kind == "incremental" and vdc2.backing, vdc2
    assert vault.verify(p2).ok
    for target, sha in want2.items():
        rec = p2.manifest.disk(target)
        assert rec is not None
        assert _region_sha(vault.disk_path(p2, rec), rec.format, tmp_path) == sha, target
