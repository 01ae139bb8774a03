"""The register pre-check refuses devices no backup could copy (UNSUPPORTED_DISK) before touching the guest.

Real libvirt, a defined and never started domain: the device check comes before the running check, so an
excluded device lets the pre-check go on to VM_NOT_RUNNING.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from controller.backup.exceptions import UnsupportedDisk
from controller.registration.exceptions import VmNotRunning
from controller.registration.register import RegisterOptions, Registrar

pytestmark = pytest.mark.libvirt  # needs the local libvirtd (make test-fast skips it)


@pytest.fixture
def iscsi_vm(settings: Any, lab_prefix: str) -> Iterator[str]:
    """A defined, never started domain whose data disk is an iSCSI LUN and that has a PCI hostdev."""
    xml = f"""<domain type='qemu'><name>{lab_prefix}iscsi</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='iscsi' name='iqn.2026-01.test.vmb:store/1'><host name='127.0.0.1' port='3260'/></source>
        <target dev='vdb' bus='virtio'/></disk>
      <hostdev mode='subsystem' type='pci' managed='no'>
        <source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>
      </devices></domain>"""
    lv = libvirt.open(settings.uri)
    dom = lv.defineXML(xml)
    try:
        yield dom.name()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
        lv.close()


def test_register_refuses_network_disk_and_hostdev(settings: Any, iscsi_vm: str) -> None:
    with pytest.raises(UnsupportedDisk) as ei:
        Registrar(settings).register(iscsi_vm, RegisterOptions())
    assert "vdb" in ei.value.message and "iqn.2026-01.test.vmb:store/1" in ei.value.message
    assert {d["target"] for d in ei.value.details["devices"]} == {"vdb", "hostdev0"}


def test_excluded_devices_pass_the_device_check(settings: Any, iscsi_vm: str) -> None:
    with pytest.raises(VmNotRunning):
        Registrar(settings).register(iscsi_vm, RegisterOptions(exclude_disks=("vdb", "hostdev0")))
