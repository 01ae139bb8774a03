"""Reading what we need from a domain's XML: its disks and their backing chains."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


@dataclass(frozen=True)
class Disk:
    """One file-backed disk of a domain, as its XML describes it."""

    target: str  # vda, vdb, ...
    path: str  # the active image (top of the chain)
    format: str  # qcow2, raw
    backing: tuple[str, ...] = ()  # backing chain below `path`, nearest first, as libvirt reports it


def state_name(dom: libvirt.virDomain) -> str:
    """The domain's state as a word: running, shutoff, paused, ..."""
    return STATE_NAMES.get(dom.state()[0], "unknown")


def disks_from_xml(xml: str) -> list[Disk]:
    """The file-backed disks (device='disk') of a domain XML, in document order."""
    root = ET.fromstring(xml)
    out: list[Disk] = []
    for d in root.findall("./devices/disk"):
        if d.get("device", "disk") != "disk" or d.get("type") != "file":
            continue
        source, target, driver = d.find("source"), d.find("target"), d.find("driver")
        if source is None or target is None or source.get("file") is None:
            continue
        chain: list[str] = []
        node = d.find("backingStore")
        while node is not None and node.find("source") is not None:
            src = node.find("source")
            if src is not None and src.get("file"):
                chain.append(str(src.get("file")))
            node = node.find("backingStore")
        out.append(
            Disk(
                target=str(target.get("dev")),
                path=str(source.get("file")),
                format=(driver.get("type") if driver is not None else None) or "raw",
                backing=tuple(chain),
            )
        )
    return out


def disks(dom: libvirt.virDomain, inactive: bool = False) -> list[Disk]:
    """The file-backed disks of a live (or, with inactive=True, the persistent) domain definition."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    return disks_from_xml(dom.XMLDesc(flags))
