"""The libvirt domain XML of a lab VM: virtio disks, serial console to a file, user-mode NIC with hostfwd."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from agent.contract import AGENT_PORT
from controller.ssh.client import GUEST_SSH_PORT
from controller.virt import metadata

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class DomainSpec:
    """What a lab domain is made of."""

    name: str
    virt_type: str  # kvm | qemu
    memory_mib: int
    vcpus: int
    disks: tuple[str, ...]  # qcow2 paths: vda, vdb, ...
    meta: metadata.LabMetadata


def netdev_args(ssh_port: int, agent_port: int) -> list[str]:
    """The QEMU arguments of the restricted user-mode NIC forwarding SSH and the agent on 127.0.0.1."""
    fwd = f"hostfwd=tcp:127.0.0.1:{ssh_port}-:{GUEST_SSH_PORT},hostfwd=tcp:127.0.0.1:{agent_port}-:{AGENT_PORT}"
    return [
        "-netdev",
        f"user,id=net0,restrict=on,{fwd}",
        # an explicit PCI address, or it collides with libvirt's own devices
        "-device",
        "virtio-net-pci,netdev=net0,bus=pci.0,addr=0x10",
    ]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    """Append a child element."""
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build_xml(spec: DomainSpec) -> str:
    """The full domain XML for spec, lab metadata included."""
    root = ET.Element("domain", type=spec.virt_type)
    _sub(root, "name", spec.name)
    _sub(root, "metadata").append(metadata.to_element(spec.meta))
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "boot", dev="hd")
    feats = _sub(root, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if spec.virt_type == "kvm":
        _sub(root, "cpu", mode="host-passthrough", check="none", migratable="on")
    else:
        _sub(root, "cpu", mode="maximum", check="none")
    _sub(root, "clock", offset="utc")
    for ev, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        _sub(root, ev, action)
    dev = _sub(root, "devices")
    _sub(dev, "emulator", "/usr/bin/qemu-system-x86_64")
    for i, path in enumerate(spec.disks):
        disk = _sub(dev, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
        _sub(disk, "source", file=path)
        _sub(disk, "target", dev=f"vd{chr(ord('a') + i)}", bus="virtio")
    serial = _sub(dev, "serial", type="file")
    _sub(serial, "source", path=spec.meta.console_path)
    _sub(serial, "target", port="0")
    chan = _sub(dev, "channel", type="unix")
    _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(dev, "memballoon", model="none")
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for arg in netdev_args(spec.meta.ssh_port, spec.meta.agent_port):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(root, encoding="unicode")
