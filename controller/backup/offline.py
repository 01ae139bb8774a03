"""Overlay safety: never delete a file a domain definition names, and merge an overlay back while the VM is off.

libvirt switches both the live and the persistent (inactive) definition of a domain to the overlays of an external
snapshot. If the VM then stops before the overlay is merged back (power loss, ``virsh destroy``, a guest shutdown),
the overlay holds every write since the snapshot and the saved definition boots from it. Usage::

    merge_offline(dom, "vda", "/x/root.vmb-J.qcow2", "/x/root.qcow2")   # qemu-img commit + redefine, overlay kept
    remove_overlay_guarded(dom.connect(), "/x/root.vmb-J.qcow2")       # OverlayInUse if any definition names it
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from controller.backup.disksource import is_block_device
from controller.backup.exceptions import OfflineMergeFailed, OverlayInUse
from controller.backup.snapshot import remove_overlay
from controller.vault import qemuimg
from controller.vault.exceptions import DiskCopyFailed
from controller.virt.connection import translate

QEMU_IMG = "qemu-img"


def _real(path: str) -> str:
    """A path with symlinks resolved, so two spellings of one file compare equal."""
    return os.path.realpath(path)


def _definitions(dom: libvirt.virDomain) -> list[str]:
    """The live and the inactive XML of a domain (whichever it has)."""
    xmls = []
    if dom.isActive():
        xmls.append(dom.XMLDesc(0))
    if dom.isPersistent():
        xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return xmls


def referenced_files(conn: libvirt.virConnect) -> set[str]:
    """Every file or block device that any domain of the host names: live and inactive XML, backing chains too."""
    out: set[str] = set()
    try:
        doms = conn.listAllDomains(0)
        for dom in doms:
            try:
                xmls = _definitions(dom)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since the listing (by another tool): it names nothing any more
                raise
            for xml in xmls:
                for src in ET.fromstring(xml).iter("source"):
                    for attr in ("file", "dev"):
                        if src.get(attr):
                            out.add(_real(str(src.get(attr))))
    except libvirt.libvirtError as e:
        raise translate(e, "listing the domain definitions that name disk files") from e
    return out


def ensure_unreferenced(conn: libvirt.virConnect, path: str) -> None:
    """Raise OverlayInUse when any domain definition of the host (live or inactive) names `path`."""
    if _real(path) in referenced_files(conn):
        raise OverlayInUse(f"{path} is still named by a domain definition; it was kept", details={"overlay": path})


def remove_overlay_guarded(conn: libvirt.virConnect, path: str) -> None:
    """Delete one of our overlays, but only when no domain definition of the host names it."""
    ensure_unreferenced(conn, path)
    remove_overlay(path)


def _backing_of(overlay: str, inf: qemuimg.ImageInfo) -> str | None:
    """The overlay's backing file as an absolute path (qemu resolves a relative one against the overlay's dir)."""
    b = inf.backing_file
    if not b:
        return None
    return b if os.path.isabs(b) else os.path.join(os.path.dirname(overlay), b)


def merge_offline(dom: libvirt.virDomain, target: str, overlay: str, base: str) -> None:
    """Commit `overlay` into `base` with qemu-img and point the inactive definition back at `base`.

    Refuses (OfflineMergeFailed, nothing changed) when the overlay's backing file is not `base`. qemu-img takes
    QEMU's write lock on both images, so a VM started meanwhile makes the commit fail instead of racing it. The
    overlay file is kept: the caller deletes it with remove_overlay_guarded once no definition names it.
    """
    try:
        inf = qemuimg.info(Path(overlay), fmt="qcow2")
    except DiskCopyFailed as e:
        raise OfflineMergeFailed(e.message, details={"overlay": overlay}) from e
    backing = _backing_of(overlay, inf)
    if backing is None or _real(backing) != _real(base):
        raise OfflineMergeFailed(
            f"overlay {overlay} is backed by {backing!r}, not by the original disk {base}; it was not merged",
            details={"overlay": overlay, "backing": backing, "expected": base},
        )
    p = subprocess.run([QEMU_IMG, "commit", "-f", "qcow2", overlay], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise OfflineMergeFailed(
            f"qemu-img commit {overlay} into {base}: {p.stderr.strip()}",
            details={"overlay": overlay, "base": base, "stderr": p.stderr},
        )
    repoint_inactive(dom, target, overlay, base, inf.backing_format or _probe_format(base))


def _probe_format(path: str) -> str | None:
    """The format qemu-img finds for an image (only when the overlay does not record its backing format)."""
    try:
        return qemuimg.info(Path(path), force_share=True).format
    except DiskCopyFailed:
        return None


def repoint_inactive(dom: libvirt.virDomain, target: str, overlay: str, base: str, base_fmt: str | None) -> bool:
    """Make the persistent definition's `target` name `base` again if it names `overlay`; True if it changed."""
    if not dom.isPersistent():
        return False
    try:
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        root = ET.fromstring(xml)
        changed = False
        for disk in root.findall("./devices/disk"):
            tgt, src = disk.find("target"), disk.find("source")
            if tgt is None or tgt.get("dev") != target or src is None:
                continue
            if _real(src.get("file") or "") != _real(overlay):
                continue
            if is_block_device(base):  # the snapshot made it a file disk; the original was a block device
                disk.set("type", "block")
                src.attrib.pop("file", None)
                src.set("dev", base)
            else:
                src.set("file", base)
            driver = disk.find("driver")
            if driver is not None and base_fmt:
                driver.set("type", base_fmt)
            for bs in disk.findall("backingStore"):
                disk.remove(bs)
            changed = True
        if changed:
            dom.connect().defineXML(ET.tostring(root, encoding="unicode"))
        return changed
    except libvirt.libvirtError as e:
        err = translate(e, f"redefining {target} of the inactive definition")
        raise OfflineMergeFailed(err.message, details={**err.details, "target": target, "overlay": overlay}) from e
