"""verify names flipped-byte and missing disks; copy-out verifies while copying, leaves no partial file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller.vault import Vault, copy_out_disk, verify_point_quick
from controller.vault.exceptions import ChecksumMismatch, PointCorrupt, PointNotFound
from tests.vault.helpers import MiB, PointMaker, reference_digest, run

VM = "0b6e4d1a-1111-4222-8333-444455556666"


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_clean_point(vault: Vault, make_point: PointMaker, qcow2_plain: Path, chain: Path) -> None:
    """A fresh point verifies ok on every disk."""
    p = make_point({"vda": qcow2_plain, "vdb": chain}, vm_uuid=VM)
    r = vault.verify(p)
    assert r.ok and r.bad_disks == [] and [d.status for d in r.disks] == ["ok", "ok"]


def test_verify_detects_flipped_byte_and_names_disk(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, chain: Path
) -> None:
    """One flipped data byte in vdb: verify reports vdb as checksum-mismatch, vda stays ok."""
    p = make_point({"vda": qcow2_plain, "vdb": chain}, vm_uuid=VM)
    vdb = vault.disk_path(p, p.manifest.disk("vdb"))  # type: ignore[arg-type]
    flip_byte(vdb, vdb.stat().st_size - 100)
    r = vault.verify(p)
    assert not r.ok and r.bad_disks == ["vdb"]
    assert {d.target: d.status for d in r.disks} == {"vda": "ok", "vdb": "checksum-mismatch"}


def test_verify_reports_missing_disk_and_qcow2_damage(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """A removed disk is 'missing'; a broken qcow2 header with re-recorded checksum fails qemu-img check."""
    p = make_point({"vda": qcow2_plain, "vdb": qcow2_plain}, vm_uuid=VM)
    os.unlink(p.path / "disks" / "vda.qcow2")
    vdb = p.path / "disks" / "vdb.qcow2"
    # Corrupt qcow2 metadata: point the L1 table offset (header bytes 40..47) at garbage.
    with open(vdb, "r+b") as f:
        f.seek(40)
        f.write((0x7FFFFFFFFFFF0000).to_bytes(8, "big"))
    m = json.loads((p.path / "manifest.json").read_text())
    m["disks"][1]["digest"] = reference_digest(vdb)  # so only qemu-img check can catch it
    (p.path / "manifest.json").write_text(json.dumps(m))
    r = vault.verify(vault.get_point(p.point_id))
    status = {d.target: d.status for d in r.disks}
    assert status == {"vda": "missing", "vdb": "check-failed"}, r.to_dict()


def test_copy_out_roundtrip_sparse(
    vault: Vault, make_point: PointMaker, raw_sparse: Path, tmp_path: Path
) -> None:
    """Copy-out gives back the same bytes, sparse, with progress, and refuses to overwrite."""
    p = make_point({"vda": raw_sparse}, vm_uuid=VM)
    dest = tmp_path / "restored.raw"
    seen: list[tuple[int, int]] = []
    rec = copy_out_disk(p, "vda", dest, progress=lambda d, t: seen.append((d, t)), vault=vault)
    assert rec.digest == p.manifest.disks[0].digest == reference_digest(dest)
    assert dest.stat().st_size == 1024 * MiB and dest.stat().st_blocks * 512 < 8 * MiB
    assert seen[-1] == (1024 * MiB, 1024 * MiB)
    with pytest.raises(Exception, match="already exists"):
        copy_out_disk(p, "vda", dest, vault=vault)
    with pytest.raises(PointNotFound):
        copy_out_disk(p, "vdz", tmp_path / "x.raw", vault=vault)


def test_copy_out_detects_corruption_and_leaves_nothing(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, tmp_path: Path
) -> None:
    """A flipped byte in the vault: CHECKSUM_MISMATCH naming vda, and no dest or .part file remains."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    stored = vault.disk_path(p, p.manifest.disks[0])
    flip_byte(stored, 2 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch) as ei:
        copy_out_disk(p, "vda", out / "vda.qcow2", vault=vault)
    assert (
        ei.value.code == "CHECKSUM_MISMATCH"
        and ei.value.details["disk"] == "vda"
        and "vda" in ei.value.message
    )
    assert os.listdir(out) == []


def test_verify_point_quick(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """Quick check passes on a good point; truncation or a missing disk fails it naming the disk."""
    p = make_point({"vda": qcow2_plain, "vdb": qcow2_plain}, vm_uuid=VM)
    verify_point_quick(p, vault=vault)
    os.truncate(p.path / "disks" / "vdb.qcow2", 4096)
    with pytest.raises(PointCorrupt) as ei:
        verify_point_quick(p, vault=vault)
    assert list(ei.value.details["problems"]) == ["vdb"]
    os.unlink(p.path / "disks" / "vda.qcow2")
    with pytest.raises(PointCorrupt, match="vda: missing"):
        verify_point_quick(p, vault=vault)


def test_verify_flags_a_stored_disk_with_backing_file(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, images: Path
) -> None:
    """A stored disk swapped for an overlay (checksum re-recorded) is reported as not self-contained."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    stored = p.path / "disks" / "vda.qcow2"
    stored.unlink()
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(qcow2_plain), str(stored))
    m = json.loads((p.path / "manifest.json").read_text())
    m["disks"][0]["digest"] = reference_digest(stored)
    (p.path / "manifest.json").write_text(json.dumps(m))
    r = vault.verify(vault.get_point(p.point_id))
    assert [(d.target, d.status) for d in r.disks] == [("vda", "has-backing")], r.to_dict()
