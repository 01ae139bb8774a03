"""The stored-disk checksum: independent of hole layout, reproducible with coreutils, format-1 points still verify."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from controller.vault import Vault, copy_out_disk, manifest
from controller.vault import digest as dg
from controller.vault.exceptions import ManifestInvalid
from controller.vault.sparse import stream
from tests.vault.helpers import MiB, PointMaker, reference_digest


def _write(path: Path, parts: list[tuple[int, bytes]], size: int) -> Path:
    """A file of `size` bytes with `parts` written at their offsets; everything else stays a hole."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, blob in parts:
            f.seek(off)
            f.write(blob)
    return path


def test_same_bytes_same_digest_whatever_the_holes(tmp_path: Path) -> None:
    """Zeros written as data and zeros left as holes give one checksum; one changed byte changes it."""
    size = 37 * MiB + 123  # not chunk-aligned: the last chunk is short
    parts = [(5 * MiB + 7, b"\x01" * 3000), (20 * MiB, os.urandom(MiB)), (size - 10, b"tail")]
    sparse_f = _write(tmp_path / "sparse", parts, size)
    dense_f = tmp_path / "dense"
    dense_f.write_bytes(sparse_f.read_bytes())  # every byte allocated
    assert sparse_f.stat().st_blocks < dense_f.stat().st_blocks
    d_sparse, d_dense = stream(sparse_f), stream(dense_f)
    assert d_sparse.digest == d_dense.digest == reference_digest(dense_f)
    assert d_sparse.data_bytes < d_dense.data_bytes == size  # holes were not read
    assert dg.of_bytes(dense_f.read_bytes()) == d_dense.digest
    _write(sparse_f, [(30 * MiB, b"\x02")], size)
    assert stream(sparse_f).digest != d_dense.digest


def test_trailing_zeros_and_empty_files_are_distinguished(tmp_path: Path) -> None:
    """Size is part of the content: 4 MiB and 8 MiB of zeros differ, an empty file has its own checksum."""
    a = _write(tmp_path / "a", [], 4 * MiB)
    b = _write(tmp_path / "b", [], 8 * MiB)
    e = _write(tmp_path / "e", [], 0)
    assert len({stream(a).digest, stream(b).digest, stream(e).digest}) == 3
    assert stream(e).digest == dg.of_bytes(b"")


def test_coreutils_recipe_from_the_docs_gives_the_same_value(tmp_path: Path) -> None:
    """The one-liner in digest.py's docstring reproduces the checksum without vmbackup."""
    f = _write(tmp_path / "f", [(MiB, os.urandom(3 * MiB)), (9 * MiB, b"x")], 9 * MiB + 5)
    recipe = "split -b 4M --filter='sha256sum | cut -c1-64 | tr a-f A-F | basenc --base16 -d' \"$F\" | sha256sum"
    out = subprocess.run(["bash", "-c", recipe], env={**os.environ, "F": str(f)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert stream(f).digest == "sha256-4m:" + out.stdout.split()[0]
    assert dg.__doc__ and recipe.replace('"$F"', "FILE") in dg.__doc__


def test_a_32_gib_hole_is_not_read(tmp_path: Path) -> None:
    """A thin 32 GiB file with 1 MiB of data: only the data chunk is read."""
    f = _write(tmp_path / "thin", [(17 << 30, os.urandom(MiB))], 32 << 30)
    res = stream(f, tmp_path / "copy")
    assert res.data_bytes == dg.CHUNK and res.logical_size == 32 << 30
    assert (tmp_path / "copy").stat().st_blocks * 512 <= 2 * MiB
    assert res.digest == stream(tmp_path / "copy").digest


def test_bad_or_unknown_checksums_are_refused() -> None:
    for bad in ("md5:abc", "sha256-4m:xyz", "nocolon"):
        with pytest.raises(ManifestInvalid):
            dg.algo_of(bad)
    with pytest.raises(ManifestInvalid):
        dg.new("crc32")


def test_format_1_point_still_verifies_and_copies_out(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, tmp_path: Path
) -> None:
    """A manifest written by format 1 (whole-file "sha256") is read, verified and restored with that algorithm."""
    p = make_point({"vda": qcow2_plain})
    mpath = p.path / "manifest.json"
    m = json.loads(mpath.read_text())
    stored = p.path / m["disks"][0]["file"]
    plain = subprocess.run(["sha256sum", str(stored)], capture_output=True, text=True, check=True).stdout.split()[0]
    m["format_version"] = 1
    m["disks"][0]["sha256"] = plain
    del m["disks"][0]["digest"]
    mpath.write_text(json.dumps(m))
    (p.path / "SHA256SUMS").unlink()  # format 1 points were written without it
    old = vault.get_point(p.point_id)
    assert old.manifest.disks[0].digest == f"sha256:{plain}"
    assert vault.verify(old).ok
    rec = copy_out_disk(old, "vda", tmp_path / "vda.qcow2", vault=vault)
    assert rec.digest == f"sha256:{plain}"
    vault.update_manifest(old, boot_check={"ok": True})  # a rewrite stays consistent: format 3 with its digest
    again = json.loads(mpath.read_text())
    assert again["format_version"] == manifest.FORMAT_VERSION and again["disks"][0]["digest"] == f"sha256:{plain}"
    r = vault.verify(vault.get_point(p.point_id))
    assert r.ok and r.warnings == []  # the rewrite wrote SHA256SUMS
