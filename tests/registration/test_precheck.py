"""Pre-check helpers that need no VM: data-disk counting and endpoint resolution from flags."""

from __future__ import annotations

import pytest

from controller.registration.precheck import count_data_disks


def _xml(n_disks: int, extra: str = "") -> str:
    """A domain XML with ``n_disks`` file disks plus ``extra`` devices."""
    disks = "".join(
        f"<disk type='file' device='disk'><source file='/d{i}.qcow2'/><target dev='vd{chr(97 + i)}'/></disk>"
        for i in range(n_disks)
    )
    return f"<domain><name>x</name><devices>{disks}{extra}</devices></domain>"


@pytest.mark.parametrize("n", [0, 1, 2, 6, 7])
def test_count_data_disks(n: int) -> None:
    assert count_data_disks(_xml(n)) == max(0, n - 1)


def test_cdrom_is_not_a_data_disk_but_block_disk_is() -> None:
    cdrom = "<disk type='file' device='cdrom'><target dev='sda'/></disk>"
    block = "<disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdz'/></disk>"
    assert count_data_disks(_xml(2, cdrom)) == 1
    assert count_data_disks(_xml(2, block)) == 2
