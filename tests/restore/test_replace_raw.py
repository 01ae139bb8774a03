"""restore --replace of a raw disk from a point that stored it as a compressed qcow2 (compression on, the default,
stores raw sources as zstd qcow2): the disk is written back raw, the domain is left as it was. Synthetic VM (no
guest OS, never started); run under ``flock /tmp/vmbackup-vm.lock``."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import Vault
from tests.restore import restore_synth as synth

pytestmark = pytest.mark.vm


def test_replace_writes_a_raw_disk_back_raw(private_settings: Settings, lv: libvirt.virConnect,
                                            private_home: Path) -> None:  # fmt: skip
    vm = synth.define_vm(lv, private_home, "rt-repl-raw", "good-state")
    raw = vm.disk.with_name("vda.img")
    synth.sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(vm.disk), str(raw))
    xml = vm.xml.replace("type='qcow2'", "type='raw'").replace(str(vm.disk), str(raw))
    lv.defineXML(xml)
    vault = Vault(private_settings.vault)
    with vault.new_point(vm.uuid) as w:
        rec = w.copy_disk("vda", raw, fmt="raw", compression="zstd")
        w.write_domain_xml(xml)
        point = w.publish({"vm": {"uuid": vm.uuid, "name": vm.name, "host": "qemu:///system"}, "consistency": "CRASH"})
    assert (rec.format, rec.compression) == ("qcow2", "zstd")
    later = vm.disk.with_name("later.qcow2")
    synth.make_disk(later, "changed-after-backup")  # the raw disk changes after the backup
    synth.sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(later), str(raw))
    assert "changed-after-backup" in synth.read_marker(raw, "raw")

    res = Restorer(private_settings).restore_replace(point.point_id, vm.name, discard_old=True)
    assert res.disks == {"vda": str(raw)}
    assert "good-state" in synth.read_marker(raw, "raw")
    with open(raw, "rb") as f:
        assert f.read(4) != b"QFI\xfb"  # raw bytes, not a qcow2 header
    assert sorted(p.name for p in raw.parent.glob("vda.img*")) == ["vda.img"]  # no temp file left
    assert "type='raw'" in lv.lookupByName(vm.name).XMLDesc(0)
