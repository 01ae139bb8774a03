"""A restored / boot-checked VM never gets a device of the original that was not restored from the point."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from controller.restore import domainxml
from controller.restore.domainxml import RewritePlan
from tests.domain_xml import PCI_HOSTDEV, block_disk, cdrom, domain, file_disk, rbd_disk, virtiofs_share, volume_disk

ORIGINAL_STORAGE = (
    "/vms/web1/root.qcow2",
    "/dev/vg0/data",
    "images",
    "logs.qcow2",
    "rbdpool/img1",
    "10.0.0.5",
    "/srv/share",
    "/isos/install.iso",
    "0x03",
    "iqn.2020-01.example",
)

DOMAIN = domain(
    "web1",
    file_disk("/vms/web1/root.qcow2", "vda")
    + block_disk("/dev/vg0/data", "vdb", driver_extra=" cache='none' io='native'")
    + volume_disk("images", "logs.qcow2", "vdc")
    + rbd_disk("rbdpool/img1", "10.0.0.5", "vdd",
               auth="<auth username='admin'><secret type='ceph' usage='client.admin'/></auth>")
    + """
    <disk type='network' device='lun'>
      <source protocol='iscsi' name='iqn.2020-01.example:t/1'><host name='10.0.0.5'/></source>
      <target dev='sdc' bus='scsi'/>
    </disk>"""
    + cdrom("sda", "/isos/install.iso")
    + virtiofs_share("/srv/share", "share")
    + PCI_HOSTDEV
    + """
    <redirdev bus='usb' type='spicevmc'/>
    <smartcard mode='passthrough' type='spicevmc'/>""",
    uuid="11111111-2222-3333-4444-555555555555",
)


def plan(disks: dict[str, tuple[str, str]]) -> RewritePlan:
    """A rewrite plan for a boot-check VM with these restored disks."""
    return RewritePlan(
        name="bootcheck-web1",
        disks=disks,
        console_log="/pool/bc/console.log",
        ports={22: 41022, 7470: 41470},
        vm_dir="/pool/bc",
    )


def test_boot_check_xml_holds_no_storage_of_the_original() -> None:
    out = domainxml.rewrite(domainxml.isolate(DOMAIN), plan({"vda": ("/pool/bc/vda.qcow2", "qcow2")}))
    for needle in ORIGINAL_STORAGE:
        assert needle not in out.xml, needle
    devices = ET.fromstring(out.xml).find("devices")
    assert devices is not None
    for tag in ("filesystem", "hostdev", "redirdev", "smartcard"):
        assert devices.find(tag) is None, tag
    disks = devices.findall("disk")
    assert [(d.get("device"), d.find("source") is not None) for d in disks] == [("disk", True), ("cdrom", False)]
    assert sorted(out.dropped_disks) == ["sdc", "vdb", "vdc", "vdd"]
    reasons = {d["target"]: d["reason"] for d in out.dropped_devices}
    assert set(reasons) == {"vdb", "vdc", "vdd", "sdc", "sda", "share", "hostdev0", "redirdev0", "smartcard0"}
    assert reasons["vdb"] == "block disk not in the point"
    assert reasons["sda"] == "cdrom media from the host removed"
    assert reasons["share"] == "host directory share (filesystem)"
    assert reasons["hostdev0"] == "host device passthrough"


def test_restored_block_and_volume_disks_become_files() -> None:
    restored = {
        "vda": ("/pool/bc/vda.qcow2", "qcow2"),
        "vdb": ("/pool/bc/vdb.raw", "raw"),
        "vdc": ("/pool/bc/vdc.qcow2", "qcow2"),
    }
    out = domainxml.rewrite(DOMAIN, plan(restored))
    devices = ET.fromstring(out.xml).find("devices")
    assert devices is not None
    got = {}
    for d in devices.findall("disk"):
        target, src = d.find("target"), d.find("source")
        if d.get("device") == "disk" and target is not None and src is not None:
            got[target.get("dev")] = (d.get("type"), dict(src.attrib))
    assert got == {t: ("file", {"file": p}) for t, (p, _f) in restored.items()}
    assert "/dev/vg0/data" not in out.xml and "pool=" not in out.xml
    assert out.replaced["/dev/vg0/data"] == "/pool/bc/vdb.raw"
    assert sorted(out.dropped_disks) == ["sdc", "vdd"]
