"""Rewriting a recovery point's domain XML so the restored VM never clashes with the original.

What changes: name, UUID (fresh), MAC addresses (fresh, also on a ``-device ...`` NIC of our
``<qemu:commandline>``), disk sources (the restored files; backing stores dropped), serial/console log files,
user-mode ``hostfwd`` ports (fresh 127.0.0.1 ports, same guest ports), explicit guest-agent socket paths
and the NVRAM path (libvirt assigns new ones). Lab metadata (``controller.virt.metadata``) is rebuilt for the new
VM: its SSH/agent ports, console, directory, and ``files`` listing only the restored VM's OWN files, so
``vmbackup lab destroy NEW`` removes those and never the original's.
Nothing of the original's storage or host hardware stays attached: every disk the point does not hold (file, block
device, pool volume, network disk, LUN) is dropped, a cdrom/floppy keeps its drive but loses host media, and every
``<filesystem>``, ``<hostdev>``, ``<redirdev>`` and ``<smartcard>`` is dropped; ``dropped_devices`` says which and why.
Disks the point holds become ``type='file'`` on the restored image, whatever their original type.
"""

from __future__ import annotations

import re
import secrets
import uuid as uuid_mod
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from agent.contract import AGENT_PORT
from controller.ssh.client import GUEST_SSH_PORT
from controller.virt import metadata as labmeta
from controller.virt.domain import source_text
from controller.virt.exceptions import LabMetadataInvalid
from controller.virt.metadata import LabMetadata

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
LAB_NS = labmeta.NS
ET.register_namespace("qemu", QEMU_NS)

#: hostfwd=tcp:127.0.0.1:HOSTPORT-:GUESTPORT (the guest address may be given or empty)
HOSTFWD_RE = re.compile(r"hostfwd=(tcp|udp):([0-9.]*):(\d+)-([0-9.]*):(\d+)")
MAC_OPT_RE = re.compile(r"(^|,)mac=[0-9a-fA-F:]{17}")


@dataclass
class RewritePlan:
    """Everything the rewrite needs to know about the new VM."""

    name: str
    disks: dict[str, tuple[str, str]]  # target -> (new path, format)
    console_log: str | None = None
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> new host port (127.0.0.1)
    uuid: str = field(default_factory=lambda: str(uuid_mod.uuid4()))
    vm_dir: str = ""  # the new VM's own directory (lab metadata ``dir``)


@dataclass
class RewriteResult:
    """The new XML and what was changed, for the job record and the lab metadata."""

    xml: str
    uuid: str
    macs: list[str]
    ports: dict[int, int]  # guest port -> new host port
    old_ports: dict[int, int]  # guest port -> original host port
    dropped_disks: list[str]  # targets of disks left out (not in the point)
    replaced: dict[str, str]  # old value -> new value (paths, ports)
    lab: LabMetadata | None = None  # the new VM's lab metadata (None: the original was not a lab VM)
    warnings: list[str] = field(default_factory=list)
    #: every device removed or emptied, with why: {"target", "device", "type", "source", "reason"}
    dropped_devices: list[dict[str, str]] = field(default_factory=list)


#: devices that hand the guest host hardware or host directories; a restored VM never gets them
PASSTHROUGH_REASONS = {
    "filesystem": "host directory share (filesystem)",
    "hostdev": "host device passthrough",
    "redirdev": "USB redirection",
    "smartcard": "smartcard passthrough",
}


def new_mac() -> str:
    """A random locally administered MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def hostfwds(xml: str) -> dict[int, int]:
    """guest port -> host port of every user-mode hostfwd in the domain's qemu:commandline."""
    root = ET.fromstring(xml)
    out: dict[int, int] = {}
    for arg in root.iter(f"{{{QEMU_NS}}}arg"):
        for m in HOSTFWD_RE.finditer(arg.get("value") or ""):
            out[int(m.group(5))] = int(m.group(3))
    return out


def rewrite(xml: str, plan: RewritePlan) -> RewriteResult:
    """Apply the plan to a point's domain XML (see the module docstring)."""
    root = ET.fromstring(xml)
    replaced: dict[str, str] = {}
    old_name = root.findtext("name")
    if old_name:
        replaced[old_name] = plan.name
    _set_text(root, "name", plan.name)
    _set_text(root, "uuid", plan.uuid)
    for tag in ("title", "description"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    dropped_devices: list[dict[str, str]] = []
    dropped = _rewrite_disks(devices, plan, replaced, dropped_devices)
    _drop_passthrough(devices, dropped_devices)
    macs = _rewrite_macs(devices)
    _rewrite_console(devices, plan, replaced)
    _strip_generated_paths(root, devices)
    old_ports = _rewrite_commandline(root, plan, macs, replaced)
    warnings: list[str] = []
    lab = _rewrite_lab_metadata(root, plan, warnings)
    return RewriteResult(
        xml=ET.tostring(root, encoding="unicode"),
        uuid=plan.uuid,
        macs=macs,
        ports={g: plan.ports[g] for g in old_ports if g in plan.ports},
        old_ports=old_ports,
        dropped_disks=dropped,
        replaced=replaced,
        lab=lab,
        warnings=warnings,
        dropped_devices=dropped_devices,
    )


def _set_text(root: ET.Element, tag: str, text: str) -> None:
    """Set (creating if needed) a top-level element's text."""
    el = root.find(tag)
    if el is None:
        el = ET.Element(tag)
        root.insert(1 if tag == "uuid" else 0, el)
    el.text = text


def _rewrite_disks(
    devices: ET.Element, plan: RewritePlan, replaced: dict[str, str], dropped_devices: list[dict[str, str]]
) -> list[str]:
    """Point the disks the point holds at the restored images; drop every other disk, empty cdrom/floppy drives."""
    dropped: list[str] = []
    for d in list(devices.findall("disk")):
        target = d.find("target")
        dev = target.get("dev") if target is not None else None
        device, kind = d.get("device", "disk"), d.get("type", "file")
        if device in ("cdrom", "floppy"):
            if d.find("source") is not None:  # host media: the original's file or device
                dropped_devices.append(_dropped(d, str(dev), f"{device} media from the host removed"))
                for media in d.findall("source"):
                    d.remove(media)
                for bs in d.findall("backingStore"):
                    d.remove(bs)
                if kind not in ("file", "block"):
                    d.set("type", "file")
            continue
        if dev is None or dev not in plan.disks or device != "disk":
            devices.remove(d)
            dropped.append(str(dev))
            dropped_devices.append(_dropped(d, str(dev), f"{kind} {device} not in the point"))
            continue
        path, fmt = plan.disks[dev]
        for bs in d.findall("backingStore"):
            d.remove(bs)
        for extra in ("auth", "encryption", "reservations"):  # belonged to the original's source
            for el in d.findall(extra):
                d.remove(el)
        src = d.find("source")
        if src is None:
            src = ET.SubElement(d, "source")
        old = src.get("file") or src.get("dev")
        if old:
            replaced[str(old)] = path
        src.attrib = {"file": path}
        for child in list(src):
            src.remove(child)
        d.set("type", "file")
        drv = d.find("driver")
        if drv is None:
            drv = ET.SubElement(d, "driver", {"name": "qemu"})
        drv.set("type", fmt)
    return dropped


def _drop_passthrough(devices: ET.Element, dropped_devices: list[dict[str, str]]) -> None:
    """Remove every <filesystem>, <hostdev>, <redirdev> and <smartcard> (host storage or hardware)."""
    for tag, reason in PASSTHROUGH_REASONS.items():
        for i, el in enumerate(devices.findall(tag)):
            target = el.find("target")
            name = target.get("dir") if target is not None and target.get("dir") else f"{tag}{i}"
            dropped_devices.append(_dropped(el, str(name), reason))
            devices.remove(el)


def _dropped(el: ET.Element, target: str, reason: str) -> dict[str, str]:
    """One dropped_devices entry."""
    return {
        "target": target,
        "device": el.get("device", "disk") if el.tag == "disk" else el.tag,
        "type": el.get("type") or el.get("mode") or "",
        "source": source_text(el),
        "reason": reason,
    }


def _rewrite_macs(devices: ET.Element) -> list[str]:
    """Give every libvirt <interface> a fresh MAC; returns the new MACs."""
    macs: list[str] = []
    for iface in devices.findall("interface"):
        mac = iface.find("mac")
        if mac is None:
            mac = ET.SubElement(iface, "mac")
        mac.set("address", new_mac())
        macs.append(str(mac.get("address")))
    return macs


def _rewrite_console(devices: ET.Element, plan: RewritePlan, replaced: dict[str, str]) -> None:
    """Serial/console output to a file goes to the new console log (type=file source, or <log file=>)."""
    if plan.console_log is None:
        return
    for dev in [*devices.findall("serial"), *devices.findall("console")]:
        src = dev.find("source")
        if dev.get("type") == "file" and src is not None and src.get("path"):
            replaced[str(src.get("path"))] = plan.console_log
            src.set("path", plan.console_log)
        log = dev.find("log")
        if log is not None and log.get("file"):
            replaced[str(log.get("file"))] = plan.console_log
            log.set("file", plan.console_log)


def _strip_generated_paths(root: ET.Element, devices: ET.Element) -> None:
    """Let libvirt choose guest-agent socket and NVRAM paths for the new VM (the old are the original's)."""
    for ch in devices.findall("channel"):
        src = ch.find("source")
        if ch.get("type") == "unix" and src is not None:
            ch.remove(src)
    osel = root.find("os")
    nvram = osel.find("nvram") if osel is not None else None
    if nvram is not None:
        nvram.text = None


def _rewrite_commandline(
    root: ET.Element, plan: RewritePlan, macs: list[str], replaced: dict[str, str]
) -> dict[int, int]:
    """New hostfwd host ports and NIC MACs in <qemu:commandline>; returns guest port -> original host port."""
    old: dict[int, int] = {}

    def port(m: re.Match[str]) -> str:
        guest, host = int(m.group(5)), int(m.group(3))
        old[guest] = host
        new = plan.ports.get(guest)
        if new is None:
            raise KeyError(f"no new host port for guest port {guest}")
        if host:
            replaced[str(host)] = str(new)
        return f"hostfwd={m.group(1)}:127.0.0.1:{new}-{m.group(4)}:{guest}"

    args = list(root.iter(f"{{{QEMU_NS}}}arg"))
    for i, arg in enumerate(args):
        value = arg.get("value") or ""
        value = HOSTFWD_RE.sub(port, value)
        if i > 0 and args[i - 1].get("value") == "-device" and "netdev=" in value:
            mac = new_mac()
            macs.append(mac)
            value = MAC_OPT_RE.sub("", value) + f",mac={mac}"
        arg.set("value", value)
    return old


def _rewrite_lab_metadata(root: ET.Element, plan: RewritePlan, warnings: list[str]) -> LabMetadata | None:
    """Replace the original's lab metadata by the new VM's (ports, console, dir, its own files); None if absent."""
    meta = root.find("metadata")
    old_el = meta.find(f"{{{LAB_NS}}}lab") if meta is not None else None
    if meta is None or old_el is None:
        return None
    meta.remove(old_el)
    try:
        old = labmeta.from_xml(ET.tostring(old_el, encoding="unicode"))
    except LabMetadataInvalid as e:  # dropping it is safe; keeping it would name the original's files and ports
        warnings.append(f"the point's lab metadata was unreadable and was dropped: {e.message}")
        return None
    files = [path for path, _fmt in plan.disks.values()]
    if plan.console_log:
        files.append(plan.console_log)
    new = LabMetadata(
        ssh_host="127.0.0.1",
        ssh_port=plan.ports.get(GUEST_SSH_PORT, 0),
        ssh_user=old.ssh_user,
        ssh_key=old.ssh_key,
        agent_host="127.0.0.1",
        agent_port=plan.ports.get(AGENT_PORT, 0),
        console_path=plan.console_log or "",
        files=tuple(files),
        vm_dir=plan.vm_dir,
        base_image="",  # restored disks are self-contained (no backing file)
        virt_type=old.virt_type,
    )
    meta.append(labmeta.to_element(new))
    return new


def isolate(xml: str, guest_ports: tuple[int, ...] = (GUEST_SSH_PORT, AGENT_PORT)) -> str:
    """No network but user-mode hostfwd of guest_ports on 127.0.0.1 with restrict=on (ports filled in later).

    Drops every libvirt <interface> and any -netdev / -device ...netdev= pair of the qemu:commandline, then
    adds one restricted user-mode NIC. The hostfwd host ports are placeholders (0) that ``rewrite`` replaces.
    """
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is not None:
        for iface in devices.findall("interface"):
            devices.remove(iface)
    cmdline = root.find(f"{{{QEMU_NS}}}commandline")
    if cmdline is None:
        cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    args = list(cmdline.findall(f"{{{QEMU_NS}}}arg"))
    drop: set[int] = set()
    for i, arg in enumerate(args[:-1]):
        nxt = args[i + 1].get("value") or ""
        if arg.get("value") == "-netdev" or (arg.get("value") == "-device" and "netdev=" in nxt):
            drop.update((i, i + 1))
    for i in sorted(drop, reverse=True):
        cmdline.remove(args[i])
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:0-:{p}" for p in guest_ports)
    for value in (
        "-netdev",
        f"user,id=vmbnet0,restrict=on,{fwd}",
        "-device",
        "virtio-net-pci,netdev=vmbnet0,bus=pci.0,addr=0x10",
    ):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", {"value": value})
    return ET.tostring(root, encoding="unicode")
