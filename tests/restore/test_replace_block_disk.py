"""--replace never swaps files over a block device: a point holding a block-device disk (LVM, raw device) is
refused with RESTORE_TARGET_INVALID instead of renaming entries under /dev (no libvirt: a fake domain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.restore.exceptions import RestoreTargetInvalid
from controller.restore.replace import _match_disks


@dataclass
class FakeRec:
    target: str
    format: str


@dataclass
class FakePoint:
    disks: list[FakeRec] = field(default_factory=list)

    @property
    def manifest(self) -> FakePoint:
        return self


class FakeDom:
    """What _match_disks reads of a domain: its name and inactive XML."""

    def __init__(self, devices: str):
        self.xml = f"<domain><name>db1</name><devices>{devices}</devices></domain>"

    def name(self) -> str:
        return "db1"

    def XMLDesc(self, flags: int = 0) -> str:
        return self.xml

    def connect(self) -> Any:
        return None


FILE_DISK = (
    "<disk type='file' device='disk'><driver type='qcow2'/><source file='/vms/db1.qcow2'/><target dev='vda'/></disk>"
)
BLOCK_DISK = (
    "<disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg0/db'/><target dev='vdb'/></disk>"
)


def test_replace_refuses_a_block_device_disk() -> None:
    point = FakePoint([FakeRec("vda", "qcow2"), FakeRec("vdb", "raw")])
    with pytest.raises(RestoreTargetInvalid) as ei:
        _match_disks(point, FakeDom(FILE_DISK + BLOCK_DISK))  # type: ignore[arg-type]
    assert "/dev/vg0/db" in ei.value.message and "--disks-only" in ei.value.remediation


def test_replace_of_file_disks_still_matches() -> None:
    point = FakePoint([FakeRec("vda", "qcow2")])
    got = _match_disks(point, FakeDom(FILE_DISK + BLOCK_DISK))  # type: ignore[arg-type]
    assert {t: str(p) for t, p in got.items()} == {"vda": "/vms/db1.qcow2"}
