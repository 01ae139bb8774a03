"""Shared constants and the domain handle of the inventory tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import libvirt

URI = "qemu:///system"
MiB = 1024 * 1024

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{disks}</devices>
</domain>"""
DISK_XML = """<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{path}'/>
  <target dev='{target}' bus='virtio'/></disk>"""


@dataclass
class InvDomains:
    """The module's two defined domains: `one` (vda qcow2 64 MiB, 4 MiB written), `two` (vda qcow2 32, vdb raw 16)."""

    prefix: str
    one: libvirt.virDomain
    two: libvirt.virDomain
    dir: Path
