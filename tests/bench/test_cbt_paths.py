"""The CBT data-path measurement (``python -m bench.cbt_paths``) at a tiny size, host-only (no VM): every dirty-map
reader sees exactly the written ranges rounded out to the bitmap's granularity, and every byte mover produces an
incremental qcow2 (backed by the parent by a relative path) that ``qemu-img compare`` finds identical to the base."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import cbt_paths
from bench.cbt_movers import MOVERS
from bench.cbt_nbd import READERS, qemu_nbd
from bench.cbt_scenario import BITMAP, CLEAN_BITMAP, expected_dirty, merge
from bench.common import MiB

KiB = 1024
TOOLS = ["qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon", "nbdinfo"]
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/host-setup.sh)"
)


def test_expected_dirty_rounds_out_to_clusters_and_merges() -> None:
    """A 100 KiB write at 1 MiB dirties two 64 KiB clusters; writes in neighbouring clusters merge into one run."""
    g = 64 * KiB
    assert expected_dirty([(MiB, 100 * KiB)], g, 16 * MiB) == [(MiB, 128 * KiB)]
    assert expected_dirty([(10, 1), (g + 5, 1)], g, 16 * MiB) == [(0, 2 * g)]
    assert expected_dirty([(16 * MiB - 10, 10)], g, 16 * MiB) == [(16 * MiB - g, g)]
    assert merge([(5, 5), (0, 5), (20, 1)]) == [(0, 10), (20, 1)]


def test_every_reader_sees_exactly_known_writes(tmp_path: Path) -> None:
    """Hand-placed writes after the bitmap is added; each reader's map must be exactly these clusters."""
    img = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -q 0 1M", str(img)], check=True)  # before the checkpoint: clean
    subprocess.run(["qemu-img", "bitmap", "--add", str(img), BITMAP], check=True)
    writes = ["write -q 3M 100k", "write -q -z 10M 64k", "write -q 40004k 4k"]
    subprocess.run(["qemu-io", *[a for w in writes for a in ("-c", w)], str(img)], check=True)
    want = [(3 * MiB, 128 * KiB), (10 * MiB, 64 * KiB), (40000 * KiB, 64 * KiB)]
    sock = tmp_path / "n.sock"
    with qemu_nbd(img, sock, BITMAP):
        for name, reader in READERS.items():
            assert reader(sock, BITMAP) == want, name


def test_tiny_run_every_path_is_exact_and_identical(tmp_path: Path) -> None:
    """256 MiB image, 4 MiB rewritten: the report covers every reader and mover, every map is exact, every
    incremental left in the work directory compares identical to the base and has its parent as relative backing."""
    out, work = tmp_path / "out", tmp_path / "work"
    assert cbt_paths.main(["--size-gib", "0.25", "--dirty-mib", "4", "--reps", "1", "--out", str(out),
                           "--work", str(work)]) == 0  # fmt: skip
    res = json.loads((out / "cbt-paths.json").read_text())
    assert "| qemu-storage-daemon blockdev-backup sync=bitmap |" in (out / "cbt-paths.md").read_text()
    written, dirty = res["params"]["written_bytes"], res["expected_dirty_bytes"]
    assert 4 * MiB <= written < 4 * MiB + 4096
    assert written <= dirty <= written + 2 * 64 * KiB * res["params"]["runs"]
    assert set(res["readers"]) == set(READERS) and set(res["movers"]) == set(MOVERS)
    for name, r in res["readers"].items():
        assert r[BITMAP]["exact"] and r[BITMAP]["dirty_bytes"] == dirty, name
        assert r[CLEAN_BITMAP]["exact"] and r[CLEAN_BITMAP]["dirty_bytes"] == 0, name
    assert res["bitmap_counts"]["counts"] == {BITMAP: dirty, CLEAN_BITMAP: 0}
    for name, r in res["movers"].items():
        assert r[BITMAP]["identical"] and r[CLEAN_BITMAP]["identical"], name
        assert r[BITMAP]["moved_bytes"] == dirty and r[CLEAN_BITMAP]["moved_bytes"] == 0, name
        assert r[BITMAP]["stored_bytes"] <= dirty + 2 * MiB, name  # only the changed clusters (+ qcow2 metadata)
    assert res["full_copy"]["identical"]
    incs = sorted(work.glob(f"inc-*-{BITMAP}.qcow2"))
    assert len(incs) == len(MOVERS)
    for inc in incs:  # independently of the tool's own check
        cmp = subprocess.run(["qemu-img", "compare", "-q", str(work / "base.qcow2"), str(inc)], check=False)
        assert cmp.returncode == 0, inc.name
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(inc)], capture_output=True,
                                         text=True, check=True).stdout)  # fmt: skip
        assert info["backing-filename"] == "parent.qcow2", inc.name


def test_merge_on_delete_recipe_keeps_every_later_point_identical(tmp_path: Path) -> None:
    """The recipe docs/incremental-design.md plans for deleting a point P that child C depends on: ``qemu-img
    commit -d C`` (C's clusters into P's file), then P's file renamed over C's; with backing files relative to the
    vault layout (``../../<point>/disks/vdb.qcow2``). Deleting the middle point, then the oldest full, leaves C
    restoring to the same contents, standalone at the end."""
    vm = tmp_path / "vm"

    def disk(point: str) -> Path:
        return vm / point / "disks" / "vdb.qcow2"

    def sh(*cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout

    for point in "ABC":
        (vm / point / "disks").mkdir(parents=True)
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(disk("A")), "64M")
    sh("qemu-io", "-c", "write -q -P 1 0 32M", str(disk("A")))
    for point, parent, writes in (("B", "A", ["write -q -P 2 1M 2M", "write -q -z 8M 1M"]),
                                  ("C", "B", ["write -q -P 3 2M 2M", "write -q -P 3 40M 1M"])):  # fmt: skip
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", f"../../{parent}/disks/vdb.qcow2",
           str(disk(point)))  # fmt: skip
        sh("qemu-io", *[a for w in writes for a in ("-c", w)], str(disk(point)))
    view = tmp_path / "c-view.qcow2"
    sh("qemu-img", "convert", "-O", "qcow2", str(disk("C")), str(view))
    for gone, left in (("B", "../../A/disks/vdb.qcow2"), ("A", None)):
        sh("qemu-img", "commit", "-q", "-d", str(disk("C")))
        disk(gone).rename(disk("C"))
        shutil.rmtree(vm / gone)
        assert subprocess.run(["qemu-img", "compare", "-q", str(view), str(disk("C"))], check=False).returncode == 0
        info = json.loads(sh("qemu-img", "info", "--output=json", str(disk("C"))))
        assert info.get("backing-filename") == left
    sh("qemu-img", "check", "-q", str(disk("C")))
