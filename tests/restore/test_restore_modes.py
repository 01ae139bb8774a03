"""Restored images are 0600 and the directories restore creates are 0700 (0711 where QEMU must pass), any umask.

Disks-only needs no libvirt; the new-VM case defines (never starts) a domain. That a VM still starts from the
0711/0600 layout is shown by test_restore_synth.py (restore --start, boot-check) and test_restore_guest.py.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import RecoveryPoint, Vault
from tests.restore import restore_synth as synth

pytestmark = pytest.mark.libvirt  # needs the local libvirtd (make test-fast skips it)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask (restored afterwards)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _point(private_settings: Settings, private_home: Path, name: str) -> RecoveryPoint:
    """A real point of a synthetic (undefined) VM."""
    d = private_home / "src" / name
    d.mkdir(parents=True)
    disk = d / "vda.qcow2"
    synth.make_disk(disk, "mode-marker")
    xml = synth.domain_xml(name, disk, d / "console.log", synth.free_port(), synth.free_port())
    vm = synth.SynthVm(name, str(uuid.uuid4()), disk, xml)
    return synth.make_point(Vault(private_settings.vault), vm)


def test_disks_only_is_private(private_settings: Settings, private_home: Path, umask: int) -> None:
    """--disks-only --to a new nested DIR: every created directory 0700, the image 0600."""
    point = _point(private_settings, private_home, f"md-{umask:o}")
    to = private_home / "out" / "deeper"
    res = Restorer(private_settings).restore_disks(point.point_id, to)
    image = Path(res.disks["vda"])
    assert (_mode(image), _mode(to), _mode(to.parent)) == (0o600, 0o700, 0o700)
    assert "mode-marker" in synth.read_marker(image)


def test_new_vm_dirs_let_qemu_through(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path, umask: int
) -> None:
    """--as NAME: the image 0600, the VM dir and restored/ 0711 (traversable by QEMU, listable by no one)."""
    point = _point(private_settings, private_home, f"mn-{umask:o}")
    res = Restorer(private_settings).restore_as_new(point.point_id, f"mn-copy-{umask:o}")
    image = Path(res.disks["vda"])
    assert _mode(image) == 0o600
    assert (_mode(image.parent), _mode(image.parent.parent)) == (0o711, 0o711)
    assert image.parent.parent == private_home / "restored"
