"""Reading what we need from a domain's XML: its disks, their backing chains, and the devices we do not copy."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import libvirt

from controller.virt.connection import translate

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


#: resolves a storage-pool volume to the path it is stored at: (pool, volume) -> path
VolumeResolver = Callable[[str, str], str]
#: <disk type=...> values we can snapshot and copy (a volume counts when its pool stores it as a file or block device)
COPYABLE_TYPES = ("file", "block", "volume")
#: devices that give a guest host storage or hardware we never copy
PASSTHROUGH_TAGS = ("filesystem", "hostdev", "redirdev", "smartcard")


@dataclass(frozen=True)
class Disk:
    """One disk of a domain we back up (a file, a block device or a pool volume), as its XML describes it."""

    target: str  # vda, vdb, ...
    path: str  # the active image (top of the chain): a file, a block device, or a pool volume's resolved path
    format: str  # qcow2, raw
    backing: tuple[str, ...] = ()  # backing chain below `path`, nearest first, as libvirt reports it
    kind: str = "file"  # the <disk type=...>: file | block | volume


@dataclass(frozen=True)
class OtherDevice:
    """A storage or passthrough device of a domain that a backup does not copy, and why."""

    target: str  # disk target (vdc), filesystem target dir/tag, or the alias/kind+index of a hostdev
    device: str  # disk | cdrom | floppy | lun | filesystem | hostdev | redirdev | smartcard
    kind: str  # the element's type attribute (network, block, mount, pci, usb, ...)
    source: str  # what it points at on the host ("" when nothing), for messages
    reason: str  # cdrom | floppy | readonly | excluded | network | lun | filesystem | hostdev | ...

    def to_dict(self) -> dict[str, str]:
        """JSON view (manifest "skipped", error details)."""
        return {
            "target": self.target,
            "device": self.device,
            "type": self.kind,
            "source": self.source,
            "reason": self.reason,
        }


@dataclass
class DiskPlan:
    """What a backup does with each storage device of a domain."""

    disks: list[Disk] = field(default_factory=list)  # copied
    skipped: list[OtherDevice] = field(default_factory=list)  # not copied on purpose (cdrom, read-only, excluded)
    unsupported: list[OtherDevice] = field(default_factory=list)  # cannot be backed up (network, passthrough)


def state_name(dom: libvirt.virDomain) -> str:
    """The domain's state as a word: running, shutoff, paused, ..."""
    return STATE_NAMES.get(dom.state()[0], "unknown")


def disks_from_xml(xml: str, resolve: VolumeResolver | None = None) -> list[Disk]:
    """The disks (device='disk', writable; file, block or pool volume) of a domain XML, in document order.

    A ``type='volume'`` disk is listed only when ``resolve`` is given (it needs libvirt to find its path).
    """
    return classify(xml, resolve=resolve).disks


def classify(xml: str, exclude: Iterable[str] = (), resolve: VolumeResolver | None = None) -> DiskPlan:
    """Sort a domain's storage and passthrough devices into copied, skipped and unsupported.

    Copied: writable ``device='disk'`` disks of type file, block or volume. Skipped: cdrom, floppy, read-only disks
    and every device whose target is in ``exclude``. Unsupported: network disks (rbd, iscsi, nbd, gluster, ...),
    LUN passthrough, ``<filesystem>`` shares and ``<hostdev>``/``<redirdev>``/``<smartcard>`` passthrough.
    """
    excluded = set(exclude)
    root = ET.fromstring(xml)
    devices = root.find("devices")
    plan = DiskPlan()
    if devices is None:
        return plan
    for d in devices.findall("disk"):
        other = _other_disk(d)
        if other is not None and other.target in excluded:
            plan.skipped.append(_with_reason(other, "excluded"))
        elif other is not None and other.reason in ("cdrom", "floppy", "readonly"):
            plan.skipped.append(other)
        elif other is not None:
            plan.unsupported.append(other)
        else:
            disk = _disk(d, resolve)
            if disk is None:
                continue
            if disk.target in excluded:
                plan.skipped.append(OtherDevice(disk.target, "disk", disk.kind, disk.path, "excluded"))
            else:
                plan.disks.append(disk)
    for tag in PASSTHROUGH_TAGS:
        for i, el in enumerate(devices.findall(tag)):
            other = _passthrough(el, tag, i)
            if other.target in excluded:
                plan.skipped.append(_with_reason(other, "excluded"))
            else:
                plan.unsupported.append(other)
    return plan


def _with_reason(o: OtherDevice, reason: str) -> OtherDevice:
    """The same device with another reason."""
    return OtherDevice(o.target, o.device, o.kind, o.source, reason)


def source_text(el: ET.Element) -> str:
    """A one-line description of an element's <source> (file, dev, dir, pool/volume, protocol:name)."""
    src = el.find("source")
    if src is None:
        return ""
    for attr in ("file", "dev", "dir", "socket"):
        if src.get(attr):
            return str(src.get(attr))
    if src.get("pool"):
        return f"{src.get('pool')}/{src.get('volume')}"
    if src.get("protocol"):
        return f"{src.get('protocol')}:{src.get('name') or ''}"
    addr = src.find("address")
    if addr is not None:
        return ",".join(f"{k}={v}" for k, v in sorted(addr.attrib.items()))
    vendor, product = src.find("vendor"), src.find("product")
    if vendor is not None and product is not None:
        return f"usb {vendor.get('id')}:{product.get('id')}"
    return ""


def _other_disk(d: ET.Element) -> OtherDevice | None:
    """A <disk> we do not copy (with why), or None for a disk we back up."""
    target = d.find("target")
    dev = str(target.get("dev")) if target is not None else "?"
    device, kind = d.get("device", "disk"), d.get("type", "file")
    if device in ("cdrom", "floppy"):
        reason = device
    elif device == "lun":
        reason = "lun"
    elif kind not in COPYABLE_TYPES:
        reason = kind  # network (rbd, iscsi, nbd, gluster, ...), nvme, vhostuser, dir
    elif d.find("readonly") is not None:
        reason = "readonly"
    else:
        return None
    return OtherDevice(dev, device, kind, source_text(d), reason)


def _disk(d: ET.Element, resolve: VolumeResolver | None) -> Disk | None:
    """A copyable <disk> as a Disk; None when it has no source (or is an unresolved pool volume)."""
    source, target, driver = d.find("source"), d.find("target"), d.find("driver")
    if source is None or target is None:
        return None
    kind = d.get("type", "file")
    if kind == "volume":
        if resolve is None or not source.get("pool") or not source.get("volume"):
            return None
        path: str | None = resolve(str(source.get("pool")), str(source.get("volume")))
    else:
        path = source.get("file" if kind == "file" else "dev")
    if not path:
        return None
    chain: list[str] = []
    node = d.find("backingStore")
    while node is not None and node.find("source") is not None:
        src = node.find("source")
        if src is not None and (src.get("file") or src.get("dev")):
            chain.append(str(src.get("file") or src.get("dev")))
        node = node.find("backingStore")
    return Disk(
        target=str(target.get("dev")),
        path=path,
        format=(driver.get("type") if driver is not None else None) or "raw",
        backing=tuple(chain),
        kind=kind,
    )


def _passthrough(el: ET.Element, tag: str, index: int) -> OtherDevice:
    """A <filesystem>, <hostdev>, <redirdev> or <smartcard> as an unsupported device."""
    target = el.find("target")
    alias = el.find("alias")
    if tag == "filesystem" and target is not None and target.get("dir"):
        name = str(target.get("dir"))
    elif alias is not None and alias.get("name"):
        name = str(alias.get("name"))
    else:
        name = f"{tag}{index}"
    kind = el.get("type") or el.get("mode") or ""
    return OtherDevice(name, tag, kind, source_text(el), tag)


def pool_resolver(conn: libvirt.virConnect) -> VolumeResolver:
    """Resolve pool volumes through libvirt (the volume's path: a file in a dir pool, a device in a logical one)."""

    def resolve(pool: str, volume: str) -> str:
        try:
            return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path())
        except libvirt.libvirtError as e:
            raise translate(e, f"looking up storage volume {pool}/{volume}") from e

    return resolve


def disks(dom: libvirt.virDomain, inactive: bool = False) -> list[Disk]:
    """The disks we back up of a live (or, with inactive=True, the persistent) domain definition."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    return disks_from_xml(dom.XMLDesc(flags), pool_resolver(dom.connect()))


def plan(dom: libvirt.virDomain, exclude: Iterable[str] = ()) -> DiskPlan:
    """``classify`` of the live definition, pool volumes resolved through the domain's connection."""
    return classify(dom.XMLDesc(0), exclude, pool_resolver(dom.connect()))
