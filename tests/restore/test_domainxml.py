"""Unit tests of the domain XML rewrite (no libvirt needed)."""

from __future__ import annotations

import uuid as uuid_mod
import xml.etree.ElementTree as ET

import pytest

from controller.restore import domainxml
from controller.restore.domainxml import LAB_NS, QEMU_NS, RewritePlan
from controller.virt import metadata as labmeta
from controller.virt.metadata import LabMetadata

LAB = labmeta.to_xml(
    LabMetadata(
        ssh_host="127.0.0.1",
        ssh_port=40022,
        ssh_user="root",
        ssh_key="/h/lab/ssh/id_ed25519",
        agent_host="127.0.0.1",
        agent_port=40470,
        console_path="/h/lab/vms/web1/console.log",
        files=("/h/lab/vms/web1/root.qcow2", "/h/lab/vms/web1/console.log"),
        vm_dir="/h/lab/vms/web1",
        base_image="/cache/base.qcow2",
        virt_type="qemu",
    )
)

ORIG = f"""<domain type='qemu' xmlns:qemu='{QEMU_NS}'>
  <name>web1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata>
    {LAB}
  </metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/h/lab/vms/web1/root.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/cache/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/h/lab/vms/web1/scratch.raw'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
    <serial type='file'><source path='/h/lab/vms/web1/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='/run/x/w.a'/><target type='virtio' name='a'/></channel>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp::40470-:7470'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=net0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""


def _plan() -> RewritePlan:
    return RewritePlan(
        name="web1-copy",
        disks={"vda": ("/r/web1-copy-vda.qcow2", "qcow2")},
        console_log="/r/console.log",
        ports={22: 50022, 7470: 50470},
        vm_dir="/r",
    )


def test_hostfwds_found() -> None:
    assert domainxml.hostfwds(ORIG) == {22: 40022, 7470: 40470}


def test_rewrite_changes_identity_disks_ports_console_and_metadata() -> None:
    out = domainxml.rewrite(ORIG, _plan())
    root = ET.fromstring(out.xml)
    assert root.findtext("name") == "web1-copy"
    assert root.findtext("uuid") == out.uuid != "11111111-2222-3333-4444-555555555555"
    srcs = [d.find("source").get("file") for d in root.findall("./devices/disk")]  # type: ignore[union-attr]
    assert srcs == ["/r/web1-copy-vda.qcow2"]  # vdc is not in the point: dropped, never shared
    assert out.dropped_disks == ["vdc"]
    assert root.find("./devices/disk/backingStore") is None
    assert root.find("./devices/serial/source").get("path") == "/r/console.log"  # type: ignore[union-attr]
    assert root.find("./devices/channel/source") is None
    assert out.ports == {22: 50022, 7470: 50470} and out.old_ports == {22: 40022, 7470: 40470}
    assert domainxml.hostfwds(out.xml) == {22: 50022, 7470: 50470}
    assert "52:54:00:aa:bb:cc" not in out.xml and len(set(out.macs)) == 2
    nic = [a.get("value") or "" for a in root.iter(f"{{{QEMU_NS}}}arg")][3]
    assert f"mac={out.macs[1]}" in nic
    labs = root.findall(f"./metadata/{{{LAB_NS}}}lab")
    assert len(labs) == 1
    meta = labmeta.from_xml(ET.tostring(labs[0], encoding="unicode"))
    assert meta == out.lab
    assert (meta.ssh_port, meta.agent_port) == (50022, 50470)
    assert meta.console_path == "/r/console.log" and meta.vm_dir == "/r"
    # only the restored VM's own files: `lab destroy web1-copy` must never delete the original's
    assert meta.files == ("/r/web1-copy-vda.qcow2", "/r/console.log")
    assert (meta.ssh_user, meta.ssh_key, meta.virt_type) == ("root", "/h/lab/ssh/id_ed25519", "qemu")
    assert meta.base_image == ""
    assert "40022" not in out.xml and "/h/lab/vms/web1" not in out.xml and "/cache/base" not in out.xml


def test_two_rewrites_never_share_uuid_or_mac() -> None:
    a, b = domainxml.rewrite(ORIG, _plan()), domainxml.rewrite(ORIG, _plan())
    assert a.uuid != b.uuid
    assert not set(a.macs) & set(b.macs)


def test_isolate_keeps_only_restricted_user_net() -> None:
    iso = domainxml.isolate(ORIG)
    root = ET.fromstring(iso)
    assert root.find("./devices/interface") is None
    args = [a.get("value") or "" for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert args.count("-netdev") == 1 and "id=net0," not in " ".join(args)
    assert "restrict=on" in args[1]
    assert domainxml.hostfwds(iso) == {22: 0, 7470: 0}
    out = domainxml.rewrite(iso, _plan())
    assert domainxml.hostfwds(out.xml) == {22: 50022, 7470: 50470}
    assert out.lab is not None and out.lab.ports() == (50022, 50470)


def test_unreadable_lab_metadata_is_dropped_not_kept() -> None:
    bad = ORIG.replace(LAB, f"<vmblab:lab xmlns:vmblab='{LAB_NS}'><vmblab:file>/h/x</vmblab:file></vmblab:lab>")
    out = domainxml.rewrite(bad, _plan())
    assert out.lab is None and "/h/x" not in out.xml
    assert out.warnings and "dropped" in out.warnings[0]


def test_no_lab_metadata_stays_without() -> None:
    plain = ORIG.replace(LAB, "")
    out = domainxml.rewrite(plain, _plan())
    assert out.lab is None and LAB_NS not in out.xml and not out.warnings


@pytest.mark.libvirt
def test_libvirt_accepts_a_rewritten_lab_domain_and_its_metadata() -> None:
    """Define (never start) the rewrite of a real lab domain XML; libvirt hands back the new lab metadata."""
    import libvirt

    from controller.lab import domain as labdomain

    name = f"vmb-rt-define-{uuid_mod.uuid4().hex[:8]}"
    meta = labmeta.from_xml(LAB)
    spec = labdomain.DomainSpec(name, "qemu", 256, 1, ("/h/lab/vms/web1/root.qcow2",), meta)
    plan = _plan()
    plan.name = name
    out = domainxml.rewrite(labdomain.build_xml(spec), plan)
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.defineXML(out.xml)
        try:
            assert labmeta.read(dom) == out.lab
            assert dom.UUIDString() == out.uuid
            assert domainxml.hostfwds(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == {22: 50022, 7470: 50470}
        finally:
            dom.undefine()
    finally:
        conn.close()
