"""Chain resets on a real QEMU domain: the vmb-* checkpoint and its qcow2 bitmap are gone, running or shut off.

A tiny OS-less TCG domain with one qcow2 disk (running is enough for libvirt to make a checkpoint); its files live
in the test's ``private_home`` and the domain is undefined afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]
import pytest

from controller import db
from controller.backup import cbt
from controller.backup.chainreset import reset_vm_chain
from controller.settings import Settings
from controller.virt.domain import disks
from tests import domain_xml as dx

pytestmark = pytest.mark.libvirt  # needs the local libvirtd and runs a tiny QEMU (no guest OS)


def bitmaps(path: Path) -> list[str]:
    """The persistent bitmaps in a qcow2 (read with force-share, so it works while QEMU runs)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    data = json.loads(out).get("format-specific", {}).get("data", {})
    return sorted(b["name"] for b in data.get("bitmaps", []))


def live_bitmaps(dom: libvirt.virDomain) -> list[str]:
    """The dirty bitmaps the running QEMU holds on its disks (QMP query-block)."""
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-block"}', 0))
    return sorted(b["name"] for dev in reply["return"] for b in dev.get("inserted", {}).get("dirty-bitmaps", []))


def bitmaps_now(dom: libvirt.virDomain, disk: Path) -> list[str]:
    """The domain's bitmaps: in QEMU while it runs (the image is updated as QEMU exits), else in the image."""
    return live_bitmaps(dom) if dom.isActive() else bitmaps(disk)


@pytest.fixture
def running_domain(private_settings: Settings, private_home: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    """A defined, running tiny domain with a 16 MiB qcow2 disk; destroyed and undefined afterwards."""
    disk = private_home / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    disk.chmod(0o666)
    lv = libvirt.open(private_settings.uri)
    name = f"vmb-test-cr-{uuidlib.uuid4().hex[:8]}"
    dom = lv.defineXML(dx.domain(name, dx.file_disk(str(disk), "vda"), uuid=str(uuidlib.uuid4())))
    try:
        dom.create()
        yield dom, disk
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        lv.close()


@pytest.mark.parametrize("shut_off", [False, True])
def test_reset_deletes_checkpoint_and_bitmap(
    private_settings: Settings, running_domain: tuple[libvirt.virDomain, Path], shut_off: bool
) -> None:
    dom, disk = running_domain
    first = cbt.create(dom, "20260101-000000-aaaaaa", disks(dom))
    second = cbt.create(dom, "20260102-000000-bbbbbb", disks(dom))
    assert cbt.ours(dom) == [first, second]
    if shut_off:
        dom.destroy()  # QEMU stores the persistent bitmaps in the image as it exits
        assert not dom.isActive()
    assert bitmaps_now(dom, disk) == [first, second]
    conn = db.connect(private_settings.db_path)
    try:
        deleted = reset_vm_chain(conn, private_settings.uri, dom.UUIDString(), "VM unprotected")
        assert sorted(deleted) == [first, second]
        assert cbt.ours(dom) == []
        assert bitmaps_now(dom, disk) == []
        if dom.isActive():
            dom.destroy()
        assert bitmaps(disk) == []  # and none is written back to the image
        reset = cbt.last_reset(conn, dom.UUIDString())
        assert reset is not None and reset[1] == "VM unprotected"
    finally:
        conn.close()
