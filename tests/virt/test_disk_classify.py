"""Which devices of a domain a backup copies, skips or refuses (domain XML strings, no libvirt)."""

from __future__ import annotations

import pytest

from controller.backup.disksource import check_xml
from controller.backup.exceptions import UnsupportedDisk
from controller.virt.domain import classify, disks_from_xml
from tests.domain_xml import PCI_HOSTDEV, block_disk, cdrom, domain, file_disk, rbd_disk, virtiofs_share, volume_disk

DOMAIN = domain(
    "mixed",
    file_disk("/vms/root.qcow2", "vda")
    + block_disk("/dev/vg0/data", "vdb")
    + volume_disk("images", "logs.qcow2", "vdc")
    + rbd_disk("rbdpool/img1", "10.0.0.5", "vdd")
    + cdrom("sda", "/isos/install.iso")
    + """
    <disk type='file' device='disk'>
      <source file='/vms/ro.raw'/><target dev='vde' bus='virtio'/><readonly/>
    </disk>
    <disk type='file' device='floppy'><target dev='fda' bus='fdc'/></disk>"""
    + virtiofs_share("/srv/share", "share")
    + PCI_HOSTDEV,
)


def resolve(pool: str, volume: str) -> str:
    """A fake pool: /pools/<pool>/<volume>."""
    return f"/pools/{pool}/{volume}"


def test_file_block_and_volume_disks_are_copied() -> None:
    plan = classify(DOMAIN, resolve=resolve)
    assert [(d.target, d.kind, d.path, d.format) for d in plan.disks] == [
        ("vda", "file", "/vms/root.qcow2", "qcow2"),
        ("vdb", "block", "/dev/vg0/data", "raw"),
        ("vdc", "volume", "/pools/images/logs.qcow2", "qcow2"),
    ]
    assert [d.target for d in disks_from_xml(DOMAIN, resolve)] == ["vda", "vdb", "vdc"]


def test_cdrom_floppy_and_readonly_are_skipped_with_a_reason() -> None:
    plan = classify(DOMAIN, resolve=resolve)
    assert {(o.target, o.device, o.reason) for o in plan.skipped} == {
        ("sda", "cdrom", "cdrom"),
        ("vde", "disk", "readonly"),
        ("fda", "floppy", "floppy"),
    }


def test_network_disk_filesystem_and_hostdev_are_unsupported() -> None:
    plan = classify(DOMAIN, resolve=resolve)
    got = {(o.target, o.device, o.reason, o.source) for o in plan.unsupported}
    assert got == {
        ("vdd", "disk", "network", "rbd:rbdpool/img1"),
        ("share", "filesystem", "filesystem", "/srv/share"),
        ("hostdev0", "hostdev", "hostdev", "bus=0x03,domain=0x0000,function=0x0,slot=0x00"),
    }


def test_unsupported_devices_refused_naming_each() -> None:
    with pytest.raises(UnsupportedDisk) as ei:
        check_xml(DOMAIN, "mixed")
    e = ei.value
    assert e.code == "UNSUPPORTED_DISK"
    for name in ("vdd", "rbd:rbdpool/img1", "share", "hostdev0"):
        assert name in e.message
    assert {d["target"] for d in e.details["devices"]} == {"vdd", "share", "hostdev0"}


def test_excluded_devices_pass_and_are_skipped() -> None:
    plan = check_xml(DOMAIN, "mixed", exclude=("vdd", "share", "hostdev0", "vdb"))
    assert plan.unsupported == []
    excluded = {o.target for o in plan.skipped if o.reason == "excluded"}
    assert excluded == {"vdd", "share", "hostdev0", "vdb"}
    assert "vdb" not in [d.target for d in plan.disks]


def test_excluding_only_some_still_refuses_the_rest() -> None:
    with pytest.raises(UnsupportedDisk) as ei:
        check_xml(DOMAIN, "mixed", exclude=("vdd",))
    assert "vdd" not in {d["target"] for d in ei.value.details["devices"]}
    assert "share" in ei.value.message


def test_active_snapshot_chain_of_a_block_disk() -> None:
    """During a backup the live XML shows the overlay file on top of the block device."""
    xml = """<domain><devices><disk type='file' device='disk'><driver type='qcow2'/>
      <source file='/h/overlays/u/dev-vg0-data.vmb-j1.qcow2'/>
      <backingStore type='block'><format type='raw'/><source dev='/dev/vg0/data'/></backingStore>
      <target dev='vdb'/></disk></devices></domain>"""
    (d,) = disks_from_xml(xml)
    assert d.path.endswith(".vmb-j1.qcow2") and d.backing == ("/dev/vg0/data",)
