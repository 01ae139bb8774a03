"""Helpers of the backup tests: tiny OS-less domains (the ``tiny`` fixture makes them), qemu-io, the CLI in its own
process and waiting for a fault point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest

from controller.virt.domain import disks

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>"""


class Tiny:
    """One defined (persistent) OS-less domain and its disk."""

    def __init__(self, conn: libvirt.virConnect, workdir: Path, name: str):
        self.base = str(workdir / f"{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.base, "16M"], check=True)
        self.dom = conn.defineXML(DOMAIN_XML.format(name=name, uuid=uuidlib.uuid4(), disk=self.base))
        self.uuid = self.dom.UUIDString()
        self.name = name

    def inactive_sources(self) -> list[str]:
        return [d.path for d in disks(self.dom, inactive=True)]

    def inactive_xml(self) -> str:
        return str(self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def remove(self) -> None:
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)  # incremental tests leave some


def qemu_io(path: str, cmd: str) -> subprocess.CompletedProcess[str]:
    """Run one qemu-io command on a qcow2 image (its result, not checked)."""
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, path], capture_output=True, text=True, check=False)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the vmbackup CLI in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", *args],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until the paused controller wrote its marker (or died, which fails the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"controller exited ({proc.returncode}) before the fault point: {out} {err}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"controller never reached the fault point {path.name}")
