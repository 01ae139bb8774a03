"""The lab facts of a domain, kept in its libvirt ``<metadata>`` so later commands need nothing but libvirt.

Namespace ``http://vmbackup.local/xmlns/lab/1`` (prefix ``vmblab``)::

    <vmblab:lab xmlns:vmblab="http://vmbackup.local/xmlns/lab/1" version="1" virt-type="qemu">
      <vmblab:ssh host="127.0.0.1" port="22345" user="root" key="/var/lib/vmbackup/lab/ssh/id_ed25519"/>
      <vmblab:agent host="127.0.0.1" port="22346"/>
      <vmblab:console path=".../lab/vms/NAME/console.log"/>
      <vmblab:dir path=".../lab/vms/NAME"/>
      <vmblab:image path=".../debian12-lab-HASH.qcow2"/>
      <vmblab:file>.../lab/vms/NAME/root.qcow2</vmblab:file>   (one per file the VM owns)
    </vmblab:lab>

Every value is a whole attribute or text, so a restore can rewrite ports and paths by exact match.
`vmbackup lab create` writes it; registration pre-checks read the endpoints from it; a restore rewrites it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from controller.virt.exceptions import LabMetadataInvalid

NS = "http://vmbackup.local/xmlns/lab/1"
PREFIX = "vmblab"
ET.register_namespace(PREFIX, NS)


@dataclass(frozen=True)
class LabMetadata:
    """Where to reach a lab VM and which files belong to it."""

    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: str
    agent_host: str
    agent_port: int
    console_path: str
    files: tuple[str, ...] = ()
    vm_dir: str = ""
    base_image: str = ""
    virt_type: str = ""

    def ports(self) -> tuple[int, int]:
        """The host ports this VM forwards (ssh, agent)."""
        return self.ssh_port, self.agent_port


def _q(tag: str) -> str:
    """The namespaced tag name."""
    return f"{{{NS}}}{tag}"


def to_element(meta: LabMetadata) -> ET.Element:
    """The metadata as an ElementTree element in the vmblab namespace."""
    root = ET.Element(_q("lab"), {"version": "1", "virt-type": meta.virt_type})
    ET.SubElement(
        root, _q("ssh"), host=meta.ssh_host, port=str(meta.ssh_port), user=meta.ssh_user, key=meta.ssh_key
    )
    ET.SubElement(root, _q("agent"), host=meta.agent_host, port=str(meta.agent_port))
    ET.SubElement(root, _q("console"), path=meta.console_path)
    ET.SubElement(root, _q("dir"), path=meta.vm_dir)
    ET.SubElement(root, _q("image"), path=meta.base_image)
    for f in meta.files:
        ET.SubElement(root, _q("file")).text = f
    return root


def to_xml(meta: LabMetadata) -> str:
    """The metadata as an XML string (root ``vmblab:lab`` with its namespace declared)."""
    return ET.tostring(to_element(meta), encoding="unicode")


def _find(root: ET.Element, tag: str) -> ET.Element:
    """The child `tag` (namespaced or, as libvirt sometimes returns it, plain) or LabMetadataInvalid."""
    el = root.find(_q(tag))
    if el is None:
        el = root.find(tag)
    if el is None:
        raise LabMetadataInvalid(f"lab metadata has no <{tag}> element")
    return el


def from_xml(xml: str) -> LabMetadata:
    """Parse what to_xml wrote (also accepts the element without namespace)."""
    root = ET.fromstring(xml)
    ssh, agent = _find(root, "ssh"), _find(root, "agent")
    files = [el.text or "" for el in [*root.findall(_q("file")), *root.findall("file")]]
    try:
        return LabMetadata(
            ssh_host=ssh.get("host", "127.0.0.1"),
            ssh_port=int(ssh.get("port", "0")),
            ssh_user=ssh.get("user", "root"),
            ssh_key=ssh.get("key", ""),
            agent_host=agent.get("host", "127.0.0.1"),
            agent_port=int(agent.get("port", "0")),
            console_path=_find(root, "console").get("path", ""),
            files=tuple(f.strip() for f in files if f.strip()),
            vm_dir=_find(root, "dir").get("path", ""),
            base_image=_find(root, "image").get("path", ""),
            virt_type=root.get("virt-type", ""),
        )
    except ValueError as e:
        raise LabMetadataInvalid(f"lab metadata has a bad port: {e}") from e


def read(dom: libvirt.virDomain) -> LabMetadata | None:
    """The lab metadata of a domain, or None if it is not a lab VM."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
    except libvirt.libvirtError:
        return None
    return from_xml(xml)


def write(dom: libvirt.virDomain, meta: LabMetadata) -> None:
    """Store the metadata in the domain's persistent config (and live state if it runs)."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, to_xml(meta), PREFIX, NS, flags)
