"""Compressed vault images (issue #17 item 1), host-only with real qemu-img/qemu-io/qemu-storage-daemon.

Full copies through PointWriter.copy_disk, an incremental through the real byte mover (qsd.backup_changed) into
PointWriter.add_incremental_disk, then everything that reads vault images: copy-out (restore), plain
`qemu-img convert`, verify, and a retention merge of the compressed chain.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from controller.backup import qsd
from controller.datapath.sample import compressed_fraction
from controller.vault import Vault, compress, qemuimg, sparse
from controller.vault.copyout import copy_out_disk, verify_disk_chain
from controller.vault.manifest import DiskRecord, RecoveryPoint
from tests.vault.chain_helpers import restore, same_content
from tests.vault.helpers import MiB, run

VM = "5e0c3a1b-2d4f-4a6b-8c9d-0e1f2a3b4c5d"
SIZE = 64 * MiB
FIELDS = {"vm": {"uuid": VM, "name": "z", "host": "qemu:///system"}, "consistency": "CRASH"}


def _text(n: int, seed: int) -> bytes:
    """n bytes of log-like text (compresses to a fraction, like a guest's logs and package files)."""
    rnd = random.Random(seed)
    words = ["kernel", "systemd", "started", "eth0", "link", "up", "session", "user", "opened", "closed", "cron"]
    out = bytearray()
    while len(out) < n:
        stamp = f"Nov 29 {rnd.randrange(24):02d}:{rnd.randrange(60):02d}"
        out += f"{stamp} host {' '.join(rnd.choices(words, k=6))}\n".encode()
    return bytes(out[:n])


def _image(path: Path, pieces: list[tuple[int, bytes]], fmt: str = "qcow2") -> Path:
    """A SIZE image of format fmt holding `pieces` (offset, bytes); the rest unallocated."""
    raw = path.with_suffix(".src.raw")
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        for off, data in pieces:
            f.seek(off)
            f.write(data)
    if fmt == "raw":
        raw.rename(path)
    else:
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
        raw.unlink()
    return path


def _store(vault: Vault, src: Path, compression: str, fmt: str = "qcow2") -> tuple[RecoveryPoint, DiskRecord]:
    """Publish a point holding src as vdb, stored with `compression`."""
    w = vault.new_point(VM)
    rec = w.copy_disk("vdb", src, fmt=fmt, compression=compression)
    w.write_domain_xml(f"<domain><name>z</name><uuid>{VM}</uuid></domain>")
    return w.publish(FIELDS), rec


def _info(path: Path) -> dict[str, object]:
    """qemu-img info as JSON."""
    d: dict[str, object] = json.loads(run("qemu-img", "info", "--output=json", str(path)))
    return d


def _compressed_clusters(path: Path) -> float:
    """The percentage of compressed clusters `qemu-img check` reports."""
    out = run("qemu-img", "check", "-f", "qcow2", str(path))
    line = next(ln for ln in out.splitlines() if "compressed clusters" in ln)
    return float(line.split(",")[-1].strip().split("%")[0])


def test_compressible_qcow2_is_stored_smaller_and_reads_the_same(vault: Vault, tmp_path: Path) -> None:
    """Text plus some random data: a zstd qcow2 with compressed clusters, far smaller, same guest bytes; its
    digest is the stored file's; restore by copy-out and by plain qemu-img convert give the source back."""
    src = _image(tmp_path / "mixed.qcow2", [(0, _text(16 * MiB, 1)), (32 * MiB, os.urandom(2 * MiB))])
    point, rec = _store(vault, src, "zstd")
    stored = vault.disk_path(point, rec)
    assert (rec.compression, rec.format, rec.method) == ("zstd", "qcow2", "qemu-img-convert")
    assert _info(stored)["format-specific"]["data"]["compression-type"] == "zstd"  # type: ignore[index]
    assert _compressed_clusters(stored) > 50.0
    plain = src.stat().st_blocks * 512
    assert rec.stored_bytes < plain * 0.5, (rec.stored_bytes, plain)
    assert same_content(src, stored)
    assert rec.digest == sparse.stream(stored).digest
    verify_disk_chain(vault, point, "vdb")
    assert copy_out_disk(point, "vdb", tmp_path / "out.qcow2", vault=vault).target == "vdb"
    assert same_content(src, tmp_path / "out.qcow2")
    assert same_content(src, restore(vault, point.point_id, "vdb", tmp_path / "plain.qcow2"))


def test_raw_source_is_stored_as_a_compressed_qcow2(vault: Vault, tmp_path: Path) -> None:
    """A raw disk, compression on: the manifest says format qcow2 and the file is disks/vdb.qcow2."""
    src = _image(tmp_path / "disk.raw", [(4 * MiB, _text(8 * MiB, 2))], fmt="raw")
    point, rec = _store(vault, src, "zstd", fmt="raw")
    assert (rec.compression, rec.format, rec.file) == ("zstd", "qcow2", "disks/vdb.qcow2")
    assert rec.stored_bytes < 4 * MiB
    assert same_content(src, vault.disk_path(point, rec))


def test_incompressible_disk_is_stored_plain_at_copy_speed(vault: Vault, tmp_path: Path) -> None:
    """Random data: the sample says compression does not pay, so the disk takes the plain sparse copy (no
    qemu-img, no second read) and is not bigger than with compression off."""
    src = _image(tmp_path / "rand.qcow2", [(0, os.urandom(24 * MiB))])
    assert (compressed_fraction(src) or 0) > compress.PAYS_BELOW
    _, rec = _store(vault, src, "zstd")
    assert (rec.compression, rec.method) == ("none", "sparse-copy")
    _, off = _store(vault, src, "none")
    assert rec.stored_bytes <= off.stored_bytes + MiB


def test_qemu_keeps_clusters_that_do_not_shrink_uncompressed(tmp_path: Path) -> None:
    """The safety net for mixed disks: qemu-img convert -c writes a random cluster as is, so a compressed image of
    random data is no bigger than an uncompressed one (plus the header's slack)."""
    src = _image(tmp_path / "rand.qcow2", [(0, os.urandom(16 * MiB))])
    qemuimg.convert(src, tmp_path / "z.qcow2", compression="zstd")
    qemuimg.convert(src, tmp_path / "u.qcow2")
    z, u = ((tmp_path / n).stat().st_blocks * 512 for n in ("z.qcow2", "u.qcow2"))
    assert z <= u + 256 * 1024, (z, u)
    assert _compressed_clusters(tmp_path / "z.qcow2") == 0.0
    assert same_content(src, tmp_path / "z.qcow2")


def test_compression_none_keeps_the_byte_copy(vault: Vault, tmp_path: Path) -> None:
    """compression none: the stored file is the source's bytes (same digest), as before compression existed."""
    src = _image(tmp_path / "mixed.qcow2", [(0, _text(4 * MiB, 3))])
    _, rec = _store(vault, src, "none")
    assert (rec.compression, rec.method) == ("none", "sparse-copy")
    assert rec.digest == sparse.stream(src).digest


def test_compressed_incremental_chain_restores_and_merges(vault: Vault, tmp_path: Path) -> None:
    """Full (zstd) + incremental through the real byte mover with compression: both records say zstd, the
    incremental holds compressed clusters, restores give the live disk back, and deleting the full merges it
    (qemu-img commit into the compressed parent writes plain clusters) with the child still restoring the same."""
    live = _image(tmp_path / "live.qcow2", [(0, _text(8 * MiB, 4))])
    run("qemu-img", "bitmap", "--add", str(live), "cp1")
    full, frec = _store(vault, live, "zstd")
    assert frec.compression == "zstd"
    with open(tmp_path / "chunk.txt", "wb") as f:
        f.write(_text(2 * MiB, 5))
    run("qemu-io", "-c", f"write -s {tmp_path / 'chunk.txt'} {20 * MiB} {2 * MiB}", str(live))
    comp = compress.for_incremental("zstd", frec)
    w = vault.new_point(VM)

    def write(dst: Path, backing: str) -> int:
        return qsd.backup_changed(str(live), "cp1", dst, backing, tmp_path / "work", compression=comp)

    irec = w.add_incremental_disk("vdb", full, write, str(live), SIZE)
    w.write_domain_xml(f"<domain><name>z</name><uuid>{VM}</uuid></domain>")
    inc = w.publish({**FIELDS, "parent": full.point_id, "chain_depth": 1})
    stored = vault.disk_path(inc, irec)
    assert (irec.compression, irec.kind) == ("zstd", "incremental")
    assert _compressed_clusters(stored) > 0.0
    assert irec.stored_bytes < MiB  # 2 MiB of text changed
    assert same_content(live, restore(vault, inc.point_id, "vdb", tmp_path / "inc.qcow2"))
    copy_out_disk(inc, "vdb", tmp_path / "inc-out.qcow2", vault=vault)
    assert same_content(live, tmp_path / "inc-out.qcow2")
    out = vault.delete_point(full)
    assert out.action == "merged"
    merged = vault.get_point(inc.point_id)
    mrec = merged.manifest.disk("vdb")
    assert mrec is not None and (mrec.kind, mrec.compression) == ("full", "zstd")
    assert same_content(live, restore(vault, inc.point_id, "vdb", tmp_path / "merged.qcow2"))
    run("qemu-img", "check", "-q", "-f", "qcow2", str(vault.disk_path(merged, mrec)))


@pytest.mark.parametrize(("requested", "parent", "want"), [("zstd", "zstd", "zstd"), ("zstd", "none", "none"),
                                                            ("none", "zstd", "none")])  # fmt: skip
def test_an_incremental_follows_its_chains_full(requested: str, parent: str, want: str) -> None:
    """An incremental is compressed only when asked and the parent's copy is: the full's sample decided."""
    rec = DiskRecord("vdb", "disks/vdb.qcow2", "qcow2", SIZE, SIZE, 0, "sha256-4m:x", "/d", compression=parent)
    assert compress.for_incremental(requested, rec) == want
    with pytest.raises(ValueError, match="zstd"):
        compress.for_incremental("lz4", rec)
