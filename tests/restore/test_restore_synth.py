"""Restore, replace and boot-check failure against real libvirt/QEMU with a small synthetic VM (no guest OS).

These start QEMU (TCG) but boot no operating system, so they are cheap; run them under
``flock /tmp/vmbackup-vm.lock``. The guest-OS tests (marker inside a booted copy, boot-check passing) are in
test_restore_guest.py.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import libvirt
import pytest

from controller.errors import VmBackupError
from controller.restore.bootcheck import PREFIX, BootChecker
from controller.restore.domainxml import hostfwds
from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import Vault
from tests.restore import restore_synth as synth

pytestmark = pytest.mark.vm


def _listening(port: int) -> bool:
    """True if something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _macs(xml: str) -> set[str]:
    """mac= options of the qemu:commandline NIC."""
    return {p.split("=", 1)[1] for p in xml.replace("'", " ").replace(",", " ").split() if p.startswith("mac=")}


def test_restore_as_new_runs_side_by_side(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    vm = synth.define_vm(lv, private_home, "rt-orig", "marker-from-original")
    point = synth.make_point(Vault(private_settings.vault), vm)
    lv.lookupByName(vm.name).create()  # the original runs while its copy is restored and started
    res = Restorer(private_settings).restore_as_new(point.point_id, "rt-copy", start=True)
    orig, copy = lv.lookupByName("rt-orig"), lv.lookupByName("rt-copy")
    assert orig.isActive() and copy.isActive() and res.started
    assert copy.UUIDString() == res.vm_uuid != orig.UUIDString()
    o_xml, c_xml = orig.XMLDesc(0), copy.XMLDesc(0)
    assert hostfwds(o_xml).keys() == hostfwds(c_xml).keys() == {22, 7470}
    assert not set(hostfwds(o_xml).values()) & set(hostfwds(c_xml).values())
    assert hostfwds(c_xml) == res.ports and all(_listening(p) for p in res.ports.values())
    assert _macs(c_xml) and not _macs(c_xml) & _macs(o_xml)
    restored = Path(res.disks["vda"])
    assert restored.parent == private_home / "restored" / "rt-copy"
    assert str(restored) in c_xml and str(vm.disk) not in c_xml
    assert "marker-from-original" in synth.read_marker(restored)
    assert res.console_log in c_xml and Path(res.console_log).exists()
    assert res.bytes_copied > 0


def test_restore_refuses_existing_name_and_cleans_up_a_bad_point(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    vm = synth.define_vm(lv, private_home, "rt-orig2", "m")
    point = synth.make_point(Vault(private_settings.vault), vm)
    r = Restorer(private_settings)
    with pytest.raises(VmBackupError) as ei:
        r.restore_as_new(point.point_id, "rt-orig2")
    assert ei.value.code == "VM_NAME_EXISTS"
    # damage the stored disk but keep its size: the quick check passes, the checksum read while copying fails
    stored = point.path / "disks" / "vda.qcow2"
    with stored.open("r+b") as f:
        f.seek(stored.stat().st_size // 2)
        f.write(b"\xff" * 4096)
    with pytest.raises(VmBackupError) as ei:
        r.restore_as_new(point.point_id, "rt-bad")
    assert ei.value.code == "CHECKSUM_MISMATCH" and "vda" in ei.value.message
    assert not (private_home / "restored" / "rt-bad").exists()
    with pytest.raises(libvirt.libvirtError):
        lv.lookupByName("rt-bad")
    stored.unlink()  # a missing disk is caught before anything is touched, naming it
    with pytest.raises(VmBackupError) as ei:
        r.restore_as_new(point.point_id, "rt-bad")
    assert ei.value.code == "POINT_CORRUPT" and "vda" in ei.value.message


def test_disks_only(private_settings: Settings, lv: libvirt.virConnect, private_home: Path) -> None:
    vm = synth.define_vm(lv, private_home, "rt-disks", "disks-only-marker")
    point = synth.make_point(Vault(private_settings.vault), vm)
    res = Restorer(private_settings).restore_disks(point.point_id, private_home / "out")
    assert list(res.disks) == ["vda"] and Path(res.disks["vda"]) == private_home / "out" / "vda.qcow2"
    assert "disks-only-marker" in synth.read_marker(private_home / "out" / "vda.qcow2")
    assert sorted(p.name for p in (private_home / "out").iterdir()) == ["vda.qcow2"]


@pytest.mark.parametrize("discard_old", [False, True])
def test_replace_refuses_running_then_replaces(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path, discard_old: bool
) -> None:
    vm = synth.define_vm(lv, private_home, f"rt-repl-{int(discard_old)}", "good-state")
    point = synth.make_point(Vault(private_settings.vault), vm)
    synth.make_disk(vm.disk.with_name("later.qcow2"), "changed-after-backup")
    vm.disk.unlink()
    vm.disk.with_name("later.qcow2").rename(vm.disk)
    dom = lv.lookupByName(vm.name)
    dom.create()
    r = Restorer(private_settings)
    with pytest.raises(VmBackupError) as ei:
        r.restore_replace(point.point_id, vm.name)
    assert ei.value.code == "VM_RUNNING" and "shut" in ei.value.remediation
    assert "changed-after-backup" in synth.read_marker(vm.disk)
    dom.destroy()
    res = r.restore_replace(point.point_id, vm.name, discard_old=discard_old)
    assert res.disks == {"vda": str(vm.disk)}
    assert "good-state" in synth.read_marker(vm.disk)
    aside = list(vm.disk.parent.glob("vda.qcow2.vmb-*"))
    if discard_old:
        assert aside == [] and res.kept_old == {}
    else:  # kept by default
        assert [p.name for p in aside] == [f"vda.qcow2.vmb-replaced-{res.job_id}"]
        assert res.kept_old == {"vda": str(aside[0])}
        assert "changed-after-backup" in synth.read_marker(aside[0])
    dom.create()  # the VM starts on the restored disk
    assert dom.isActive()


def test_boot_check_fails_on_unbootable_point_and_leaves_nothing(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    vm = synth.define_vm(lv, private_home, "rt-noboot", "m")
    point = synth.make_point(Vault(private_settings.vault), vm)
    t0 = time.monotonic()
    with pytest.raises(VmBackupError) as ei:
        BootChecker(private_settings).run(point.point_id, timeout_s=20)
    assert time.monotonic() - t0 < 120
    e = ei.value
    assert e.code == "BOOT_CHECK_FAILED" and "no login prompt" in e.message
    checks = {c["name"]: c for c in e.details["checks"]}
    assert checks["restore"]["ok"] and not checks["boot"]["ok"]
    assert checks["fsck:vda1"]["ok"]  # the filesystem itself is fine: the reason is the boot
    assert "console_tail" in e.details
    # nothing left: no domain, no files, the forwarded ports closed
    assert not [d.name() for d in lv.listAllDomains(0) if d.name().startswith(PREFIX)]
    assert not any((private_home / "bootcheck").iterdir())
    stored = json.loads((point.path / "manifest.json").read_text())["boot_check"]
    assert stored["result"] == "failed" and stored["job_id"] == e.details["job_id"]
    assert stored["reason"] == e.details["reason"]
