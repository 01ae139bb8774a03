"""Copy semantics against a real QEMU process holding a chain open the way a running VM does after a snapshot.

`qemu-system-x86_64 -M none -S` (no guest, no CPU work) opens base <- middle <- top with top read-write and
the backing layers read-only, exactly like a domain after an external disk-only snapshot. The vault must copy
the read-only middle layer (flattened with its base) without -U, and must refuse the active top layer.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.vault import Vault
from controller.vault.exceptions import DiskCopyFailed
from tests.vault.helpers import MiB, qemu_io_write, run

VM = "0b6e4d1a-1111-4222-8333-777777777777"


@pytest.fixture
def live_chain(images: Path) -> Iterator[tuple[Path, Path]]:
    """(middle, top) of a 3-layer chain held open by a paused QEMU; data in base and middle."""
    base, mid, top = images / "base.qcow2", images / "mid.qcow2", images / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), "32M")
    qemu_io_write(base, "qcow2", 0x11, 0, 4 * MiB)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(mid))
    qemu_io_write(mid, "qcow2", 0x22, 1 * MiB, 1 * MiB)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(mid), str(top))
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-S", "-display", "none", "-nodefaults", "-monitor", "none",
         "-drive", f"file={top},if=none,id=d0,format=qcow2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["qemu-img", "info", str(top)], capture_output=True).returncode == 0:
            assert qemu.poll() is None, f"qemu exited: {qemu.stderr.read() if qemu.stderr else ''!r}"
            assert time.monotonic() < deadline, "qemu never locked the top image"
            time.sleep(0.1)
        yield mid, top
    finally:
        qemu.terminate()
        qemu.wait(timeout=10)


def test_readonly_layer_of_running_chain_copies_without_force_share(
    vault: Vault, live_chain: tuple[Path, Path]
) -> None:
    """The middle (read-only in QEMU) layer is flattened with its base; the active top is refused."""
    mid, top = live_chain
    with vault.new_point(VM) as w:
        rec = w.copy_disk("vda", mid, fmt="qcow2")
        with pytest.raises(DiskCopyFailed, match="lock") as ei:
            w.copy_disk("vdb", top, fmt="qcow2")
        assert "snapshot" in ei.value.remediation
        w.write_domain_xml("<domain/>")
        point = w.publish({"consistency": "CRASH"})
    stored = vault.disk_path(point, rec)
    assert rec.method == "qemu-img-convert" and [d.target for d in point.manifest.disks] == ["vda"]
    reads = ["read -P 0x11 0 1M", "read -P 0x22 1M 1M", "read -P 0x11 2M 2M"]
    run("qemu-io", "-f", "qcow2", *(x for r in reads for x in ("-c", r)), str(stored))
    assert vault.verify(point).ok
