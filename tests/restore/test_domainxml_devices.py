"""A restored / boot-checked VM never gets a device of the original that was not restored from the point."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from controller.restore import domainxml
from controller.restore.domainxml import RewritePlan

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

DOMAIN = """<domain type='qemu'>
  <name>web1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/vms/web1/root.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/><source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/><source pool='images' volume='logs.qcow2'/><target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <auth username='admin'><secret type='ceph' usage='client.admin'/></auth>
      <source protocol='rbd' name='rbdpool/img1'><host name='10.0.0.5' port='6789'/></source>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='network' device='lun'>
      <source protocol='iscsi' name='iqn.2020-01.example:t/1'><host name='10.0.0.5'/></source>
      <target dev='sdc' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/isos/install.iso'/><target dev='sda' bus='sata'/><readonly/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/>
    </filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>
    <redirdev bus='usb' type='spicevmc'/>
    <smartcard mode='passthrough' type='spicevmc'/>
  </devices>
</domain>"""


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
