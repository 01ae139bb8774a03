"""A small synthetic VM and a real recovery point of it, for restore tests that need QEMU but not a guest OS.

The disk is a 64 MiB qcow2 with an MBR and one ext4 partition holding /marker (no bootloader: SeaBIOS
finds nothing to boot, which is exactly what a damaged point looks like to boot-check). The domain uses TCG,
64 MiB of RAM, a serial console log and a user-mode NIC with hostfwd on 127.0.0.1, like the lab VMs.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt

from controller.restore.domainxml import QEMU_NS
from controller.vault import RecoveryPoint, Vault


def sh(*cmd: str) -> str:
    """Run a command, fail loudly."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def make_disk(path: Path, marker: str) -> None:
    """A qcow2 with one ext4 partition (at 1 MiB) whose /marker holds the given text."""
    raw = path.with_suffix(".raw")
    tree = path.parent / f"{path.stem}-tree"
    tree.mkdir()
    (tree / "marker").write_text(marker)
    sh("truncate", "-s", "64M", str(raw))
    sh("parted", "-s", str(raw), "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "60MiB")
    sh("mkfs.ext4", "-q", "-d", str(tree), "-E", "offset=1048576", str(raw), "59M")
    sh("qemu-img", "convert", "-O", "qcow2", str(raw), str(path))
    raw.unlink()
    path.chmod(0o644)


def read_marker(image: Path, fmt: str = "qcow2") -> str:
    """/marker from the image's first partition, read offline (qemu-img raw view + debugfs)."""
    piece = image.with_name(image.name + ".p1.raw")
    opts = (
        f'json:{{"driver":"raw","offset":1048576,"size":{59 << 20},'
        f'"file":{{"driver":"{fmt}","file":{{"driver":"file","filename":"{image}"}}}}}}'
    )
    try:
        sh("qemu-img", "convert", "-U", "-O", "raw", opts, str(piece))
        return sh("debugfs", "-R", "cat /marker", str(piece))
    finally:
        piece.unlink(missing_ok=True)


def free_port() -> int:
    """A currently free 127.0.0.1 port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def domain_xml(name: str, disk: Path, console: Path, ssh_port: int, agent_port: int) -> str:
    """A lab-like domain: TCG, serial log file, user-mode NIC forwarding SSH and agent ports."""
    fwd = f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    fwd += f",hostfwd=tcp:127.0.0.1:{agent_port}-:7470"
    return f"""<domain type='qemu' xmlns:qemu='{QEMU_NS}'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='{fwd}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=net0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""


@dataclass
class SynthVm:
    """A defined synthetic VM and its files."""

    name: str
    uuid: str
    disk: Path
    xml: str


def define_vm(conn: libvirt.virConnect, workdir: Path, name: str, marker: str) -> SynthVm:
    """Make the disk and define the domain (not started)."""
    d = workdir / name
    d.mkdir(mode=0o755)
    disk = d / "vda.qcow2"
    make_disk(disk, marker)
    xml = domain_xml(name, disk, d / "console.log", free_port(), free_port())
    dom = conn.defineXML(xml)
    return SynthVm(name, dom.UUIDString(), disk, xml)


def make_point(vault: Vault, vm: SynthVm) -> RecoveryPoint:
    """A real recovery point of the (shut-off) synthetic VM, written through the vault's PointWriter."""
    with vault.new_point(vm.uuid) as w:
        # stored compressed, as a backup does by default: restore, replace, instant restore and boot-check read it
        assert w.copy_disk("vda", vm.disk, fmt="qcow2", compression="zstd").compression == "zstd"
        w.write_domain_xml(vm.xml)
        return w.publish({"vm": {"uuid": vm.uuid, "name": vm.name, "host": "qemu:///system"}, "consistency": "CRASH"})
