"""Host-only parts of the size prediction (controller/backup/space.py): the margin rule, VAULT_FULL with the
prediction in its details, qemu-img measure of a held image, and the compression ratio read from real points (a
zstd-compressed qcow2 written through PointWriter, as the engine's writer stores one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.backup import space
from controller.backup.space import DiskPrediction, Prediction
from controller.vault import Vault, layout, sparse
from controller.vault.exceptions import VaultFull
from controller.vault.manifest import DiskRecord
from controller.virt.domain import Disk

MiB = 1 << 20
VM = "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


def test_margin_is_five_percent_capped_at_one_gib() -> None:
    assert space.margin_for(100 * MiB) == 5 * MiB
    assert space.margin_for(20 << 30) == 1 << 30  # 5 % would be 1 GiB exactly
    assert space.margin_for(1 << 40) == 1 << 30


def test_check_refuses_with_the_prediction(tmp_path: Path) -> None:
    pred = Prediction(bytes=90 * MiB, disks=[DiskPrediction("vda", "full", 90 * MiB, "qemu-img-measure")],
                      free_bytes=94 * MiB, margin_bytes=5 * MiB)  # fmt: skip
    assert not pred.fits
    with pytest.raises(VaultFull) as e:
        space.check(Vault(tmp_path), pred)
    assert e.value.code == "VAULT_FULL" and "vda full 90.0 MiB (qemu-img-measure)" in e.value.message
    assert e.value.details["bytes"] == 90 * MiB and e.value.details["fits"] is False
    space.check(Vault(tmp_path), Prediction(bytes=89 * MiB, free_bytes=94 * MiB, margin_bytes=5 * MiB))


def test_measure_reads_a_chain_held_by_a_writer(tmp_path: Path) -> None:
    """The flattened chain's data (base 8 MiB + overlay 8 MiB overlapping 4) while another process holds the
    overlay writable, as a running QEMU does."""
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 8M", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 4M 8M", str(top)], check=True, capture_output=True)
    holder = subprocess.Popen(["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={top}",
                               "--blockdev", "driver=qcow2,node-name=q,file=f"])  # fmt: skip
    try:
        for _ in range(50):  # until it holds the lock
            if subprocess.run(["qemu-img", "info", str(top)], capture_output=True).returncode != 0:
                break
            subprocess.run(["sleep", "0.1"])
        got = space.measure(Disk(target="vda", path=str(top), format="qcow2"))
    finally:
        holder.terminate()
        holder.wait()
    assert 12 * MiB <= got <= 12 * MiB + MiB, got


def _compressed_point(vault: Vault, tmp_path: Path, index: int) -> int:
    """Publish a point whose vdb is a zstd-compressed qcow2 of 16 MiB of one byte pattern; its stored bytes."""
    src = tmp_path / f"src{index}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 16M", str(src)], check=True, capture_output=True)
    w = vault.new_point(VM)
    rel = layout.disk_file_name("vdb", "qcow2")
    dst = w.tmp / rel
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", "-o", "compression_type=zstd", str(src),
                    str(dst)], check=True)  # fmt: skip
    res = sparse.stream(dst)
    stored = dst.stat().st_blocks * 512
    w.disks.append(DiskRecord("vdb", rel, "qcow2", 64 * MiB, res.logical_size, stored, res.digest, str(src),
                              method="test", compression="zstd"))  # fmt: skip
    w.write_domain_xml(f"<domain><name>z</name><uuid>{VM}</uuid></domain>")
    w.publish({"vm": {"uuid": VM, "name": "z", "host": "qemu:///system"}, "consistency": "CRASH"})
    return stored


def test_recent_ratio_from_compressed_points(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    assert space.recent_ratio(vault, VM) == 1.0  # no history: never optimistic
    stored = _compressed_point(vault, tmp_path, 0)
    ratio = space.recent_ratio(vault, VM)
    measured = space.measure(Disk(target="vdb", path=str(vault.list_points(VM)[0].path / "disks/vdb.qcow2"),
                                  format="qcow2"))  # fmt: skip
    assert 16 * MiB <= measured and ratio == pytest.approx(stored / measured)
    assert ratio < 0.2, (stored, measured)  # a repeated byte compresses far below that
