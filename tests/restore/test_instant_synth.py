"""Instant restore against real libvirt/QEMU with the small synthetic VM (no guest OS: cheap, no boot).

Covers what the lab-guest test does not: a shut-off instant VM finished into another directory (qemu-img convert,
definition rewritten, old overlays gone) starts from its own file; --pool-dir refused while it runs (pin kept);
a failed instant restore leaves no pin, overlay or ACL behind. Run under ``flock /tmp/vmbackup-vm.lock``.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import libvirt
import pytest

from controller.restore import instant
from controller.restore.exceptions import InstantFinishFailed, RestoreFailed, VmNameExists
from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import Vault, pins
from tests.restore import restore_synth as synth

pytestmark = pytest.mark.vm


def sha(path: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shut_off_instant_vm_finished_into_another_dir_starts_from_its_own_file(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    vm = synth.define_vm(lv, private_home, "it-orig", "marker-instant")
    vault = Vault(private_settings.vault)
    point = synth.make_point(vault, vm)
    stored = vault.disk_path(point, point.manifest.disks[0])
    before = sha(stored)
    with Restorer(private_settings) as r:
        res = r.restore_as_new(point.point_id, "it-copy", instant=True, start=True)
        overlay = Path(res.disks["vda"])
        assert res.mode == "instant" and res.bytes_copied == 0 and res.backing == {"vda": [str(stored)]}
        dom = lv.lookupByName("it-copy")
        assert dom.isActive() and str(stored) in dom.XMLDesc(0)  # QEMU opened the vault file through the ACL
        assert stored.stat().st_uid == 0 and "marker-instant" in synth.read_marker(overlay)
        with pytest.raises(InstantFinishFailed, match="shut off"):
            instant.finish(r, "it-copy", private_home / "moved")
        assert [p.name for p in pins.list_pins(vault.root)] == ["it-copy"]  # still pinned
        dom.destroy()
        out = instant.finish(r, "it-copy", private_home / "moved")
    moved = private_home / "moved" / overlay.name
    assert out.method == "convert" and out.disks == {"vda": str(moved)} and not overlay.exists()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert str(moved) in xml and str(private_settings.vault) not in xml
    info = subprocess.run(["qemu-img", "info", "--backing-chain", str(moved)], capture_output=True, text=True,
                          check=True).stdout
    assert "backing file" not in info and "marker-instant" in synth.read_marker(moved)
    assert pins.list_pins(vault.root) == []
    assert "user:" not in subprocess.run(["getfacl", "-c", "-p", str(stored)], capture_output=True, text=True,
                                         check=True).stdout.replace("user::", "")
    dom.create()  # runs from its own file now
    assert dom.isActive() and str(private_settings.vault) not in dom.XMLDesc(0)
    assert sha(stored) == before


def test_a_failed_instant_restore_leaves_no_pin_overlay_or_acl(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = synth.define_vm(lv, private_home, "it-orig2", "m")
    vault = Vault(private_settings.vault)
    point = synth.make_point(vault, vm)
    with Restorer(private_settings) as r, pytest.raises(VmNameExists):
        r.restore_as_new(point.point_id, "it-orig2", instant=True)

    def boom(*_a: object, **_k: object) -> None:
        assert [p.name for p in pins.list_pins(vault.root)] == ["it-new"]  # pinned by then
        raise RuntimeError("define failed")

    monkeypatch.setattr(Restorer, "_define", boom)
    with Restorer(private_settings) as r, pytest.raises(RestoreFailed, match="define failed"):
        r.restore_as_new(point.point_id, "it-new", instant=True)
    assert pins.list_pins(vault.root) == []
    assert not (private_home / "restored" / "it-new").exists()
    stored = vault.disk_path(point, point.manifest.disks[0])
    acl = subprocess.run(["getfacl", "-c", "-p", str(stored)], capture_output=True, text=True, check=True).stdout
    assert "user:" not in acl.replace("user::", "")
