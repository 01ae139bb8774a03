"""Copying disks into the vault: sparse copy keeps holes, checksums match a naive reference, chains are flattened."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from controller.vault import Vault
from controller.vault.sparse import stream
from tests.vault.helpers import MiB, PointMaker, reference_digest, run


def test_sparse_raw_copy_keeps_holes_and_hash(vault: Vault, raw_sparse: Path, make_point: PointMaker) -> None:
    """A 1 GiB raw file with 4 MiB of data is stored as ~4 MiB, checksummed like a full read, same content."""
    seen: list[tuple[int, int]] = []
    vm = "6f1c2b9e-0000-4000-8000-00000000aaaa"
    with vault.new_point(vm) as w:
        rec = w.copy_disk("vda", raw_sparse, progress=lambda d, t: seen.append((d, t)))
        w.write_domain_xml("<domain/>")
        point = w.publish({"vm": {"uuid": vm, "name": "r"}, "consistency": "CRASH"})
    stored = vault.disk_path(point, rec)
    assert rec.format == "raw" and rec.method == "sparse-copy" and rec.file == "disks/vda.raw"
    assert stored.stat().st_size == raw_sparse.stat().st_size == 1024 * MiB
    assert stored.stat().st_blocks * 512 <= raw_sparse.stat().st_blocks * 512 + MiB
    assert stored.stat().st_blocks * 512 < 8 * MiB
    assert rec.stored_bytes == stored.stat().st_blocks * 512
    assert rec.digest == reference_digest(raw_sparse) == stream(stored).digest
    reads = ["read -P 0 0 1M", "read -P 0xab 1M 2M", "read -P 0x5a 768M 2M"]
    run("qemu-io", "-f", "raw", *(x for r in reads for x in ("-c", r)), str(stored))
    assert seen[0] == (0, 1024 * MiB) and seen[-1] == (1024 * MiB, 1024 * MiB)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


def test_all_zero_data_blocks_become_holes(tmp_path: Path) -> None:
    """Allocated zero blocks are not written (like cp --sparse=always) but are still hashed."""
    src = tmp_path / "zeros.bin"
    with open(src, "wb") as f:
        f.write(b"\0" * (16 * MiB) + b"x" * MiB)
    assert src.stat().st_blocks * 512 >= 17 * MiB
    dst = tmp_path / "copy.bin"
    res = stream(src, dst)
    assert res.digest == reference_digest(src)
    assert res.data_bytes == 17 * MiB
    assert dst.stat().st_blocks * 512 <= 2 * MiB
    assert dst.read_bytes() == src.read_bytes()


def test_qcow2_plain_is_copied_byte_exact(make_point: PointMaker, qcow2_plain: Path, vault: Vault) -> None:
    """A qcow2 with no backing file is copied as the file itself."""
    point = make_point({"vda": qcow2_plain})
    rec = point.manifest.disks[0]
    stored = vault.disk_path(point, rec)
    assert rec.method == "sparse-copy" and rec.format == "qcow2"
    assert rec.virtual_size == 64 * MiB
    assert rec.logical_size == qcow2_plain.stat().st_size
    assert rec.digest == reference_digest(stored) == reference_digest(qcow2_plain)
    assert rec.source_path == str(qcow2_plain)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(qcow2_plain), str(stored))


def test_backing_chain_is_flattened(make_point: PointMaker, chain: Path, vault: Vault) -> None:
    """An overlay is stored self-contained: no backing file, same guest-visible content as the chain."""
    point = make_point({"vda": chain})
    rec = point.manifest.disks[0]
    stored = vault.disk_path(point, rec)
    info = json.loads(run("qemu-img", "info", "--output=json", str(stored)))
    assert "backing-filename" not in info and info["format"] == "qcow2"
    assert rec.method == "qemu-img-convert" and rec.virtual_size == 64 * MiB
    out = run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(chain), str(stored))
    assert "identical" in out.lower()
    assert rec.digest == reference_digest(stored)
    assert rec.stored_bytes == stored.stat().st_blocks * 512
    # the base's data that the overlay does not cover really made it: read through qemu-io
    run("qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 2M", "-c", "read -P 0x22 2M 1M", str(stored))


def test_convert_progress_reaches_total(vault: Vault, chain: Path) -> None:
    """qemu-img convert progress is parsed into (done, total) callbacks ending at the virtual size."""
    seen: list[tuple[int, int]] = []
    w = vault.new_point("6f1c2b9e-0000-4000-8000-00000000bbbb")
    w.copy_disk("vdb", chain, progress=lambda d, t: seen.append((d, t)))
    w.abort()
    assert seen and seen[-1] == (64 * MiB, 64 * MiB)


def test_source_open_for_writing_is_refused_without_force(vault: Vault, qcow2_plain: Path) -> None:
    """qemu-img's lock check stands in for 'a VM still writes this': a held write lock blocks the copy."""
    import subprocess

    from controller.vault.exceptions import DiskCopyFailed

    # qemu-io in interactive mode holds the image open read-write (with QEMU's write lock) until stdin closes.
    holder = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(qcow2_plain)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(b"write -P 0x01 0 4k\n")
        holder.stdin.flush()
        holder.stdout.readline()  # wait until the write happened: the image is open
        w = vault.new_point("6f1c2b9e-0000-4000-8000-00000000cccc")
        try:
            w.copy_disk("vda", qcow2_plain, fmt="qcow2")
            raise AssertionError("copy of a write-locked image succeeded")
        except DiskCopyFailed as e:
            assert "lock" in e.message.lower()
        finally:
            w.abort()
    finally:
        holder.communicate(b"quit\n", timeout=10)
    assert not os.listdir(vault.root / "6f1c2b9e-0000-4000-8000-00000000cccc")
