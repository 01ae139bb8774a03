"""Incremental points in the vault: a full + 3 incrementals written through PointWriter (real qemu-img/qemu-io), each
restored (by vmbackup and by plain qemu-img) identical to the image it was taken from; corruption and gaps in a
chain fail restore and verify for every point that depends on them."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.cli.points_cmd import human_size
from controller.vault import RecoveryPoint, Vault, copy_out_disk, layout, qemuimg, verify_point_quick
from controller.vault.exceptions import ChainBroken, ChainMismatch, ChecksumMismatch, PointCorrupt, VaultFull
from tests.vault.helpers import (
    MiB,
    Writes,
    images_identical,
    incremental_write,
    qemu_io_apply,
    reference_digest,
    run,
)

VM = "0b6e4d1a-1111-4222-8333-444455556666"
SIZE = 64 * MiB
#: what changes in the image between points: small runs, an unaligned write, zeroes over the full's data
CHANGES: list[Writes] = [
    [(0xA1, 1 * MiB, 64 << 10), (0xA2, 40 * MiB, 2 * MiB)],
    [(None, 0, 4 * MiB), (0xA3, 20 * MiB, 512 << 10)],
    [(0xA4, 1 * MiB + 4096, 4096), (0xA5, 60 * MiB, 1 * MiB)],
]
T0 = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


@dataclass
class Built:
    """The chain: points[0] full, then incrementals; states[k] is the image's content when points[k] was taken."""

    points: list[RecoveryPoint]
    states: list[Path]
    live: Path


def point_id(k: int) -> str:
    """Point ids in time order (the chain's order)."""
    return layout.new_point_id(T0 + dt.timedelta(minutes=k))


def fields(k: int, **extra: object) -> dict[str, object]:
    """Manifest fields of the k-th point."""
    return {"vm": {"uuid": VM, "name": "web1"}, "consistency": "FILE_SYSTEM", "checkpoint": f"vmb-job{k}", **extra}


def snapshot(live: Path, dest: Path) -> Path:
    """The image's guest-visible content now, as a standalone qcow2."""
    run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(live), str(dest))
    return dest


@pytest.fixture
def built(vault: Vault, images: Path) -> Built:
    """A live qcow2 carrying checkpoint bitmaps, backed up full, then changed and backed up incrementally 3 times."""
    live = images / "live.qcow2"
    vda = images / "vda.raw"  # a raw disk: copied in full into every point, incremental or not
    run("qemu-img", "create", "-q", "-f", "qcow2", str(live), str(SIZE))
    run("qemu-img", "create", "-q", "-f", "raw", str(vda), str(4 * MiB))
    qemu_io_apply(live, [(0x11, 0, 8 * MiB), (0x22, 32 * MiB, 4 * MiB)])
    run("qemu-img", "bitmap", "--add", str(live), "vmb-job0")
    run("qemu-img", "bitmap", "--add", str(live), "user-bitmap")
    with vault.new_point(VM, point_id(0)) as w:
        w.copy_disk("vdb", live, fmt="qcow2")
        w.copy_disk("vda", vda, fmt="raw")
        w.write_domain_xml(f"<domain><name>web1</name><uuid>{VM}</uuid></domain>")
        points = [w.publish(fields(0))]
    states = [snapshot(live, images / "state0.qcow2")]
    for k, writes in enumerate(CHANGES, 1):
        qemu_io_apply(live, writes)
        parent = points[-1]
        with vault.new_point(VM, point_id(k)) as w:
            w.add_incremental_disk("vdb", parent, incremental_write(writes), str(live), SIZE)
            w.copy_disk("vda", vda, fmt="raw")
            w.write_domain_xml(f"<domain><name>web1</name><uuid>{VM}</uuid></domain>")
            points.append(w.publish(fields(k, parent=parent.point_id, chain_depth=k)))
        states.append(snapshot(live, images / f"state{k}.qcow2"))
    return Built(points, states, live)


def recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    """A progress callback appending (done, total) to seen."""
    return lambda done, total: seen.append((done, total))


def vdb(vault: Vault, p: RecoveryPoint) -> Path:
    """The point's stored vdb."""
    rec = p.manifest.disk("vdb")
    assert rec is not None
    return vault.disk_path(p, rec)


def test_manifests_and_backing_chain(vault: Vault, built: Built) -> None:
    """Each incremental records type, parent, depth, changed bytes and a relative backing qemu-img follows."""
    pts = built.points
    assert [p.manifest.type for p in pts] == ["full", "incremental", "incremental", "incremental"]
    assert [p.manifest.parent for p in pts] == [None, *(p.point_id for p in pts[:-1])]
    assert [p.manifest.chain_depth for p in pts] == [0, 1, 2, 3]
    for k, p in enumerate(pts[1:], 1):
        rec = p.manifest.disk("vdb")
        assert rec is not None and rec.kind == "incremental" and rec.method == "qsd-blockdev-backup"
        assert rec.backing == f"../../{pts[k - 1].point_id}/disks/vdb.qcow2"
        assert rec.changed_bytes == sum(n for _, _, n in CHANGES[k - 1])
        assert rec.stored_bytes < rec.changed_bytes + 2 * MiB  # only the changed clusters (+ qcow2 metadata)
        assert rec.digest == reference_digest(vdb(vault, p))
        vda = p.manifest.disk("vda")
        assert vda is not None and vda.kind == "full" and vda.backing is None
    out = run("qemu-img", "info", "--output=json", "--backing-chain", str(vdb(vault, pts[-1])))
    chain_files = [Path(i["filename"]).resolve() for i in json.loads(out)]
    assert chain_files == [vdb(vault, p) for p in reversed(pts)]


def test_every_point_restores_identically(vault: Vault, built: Built, tmp_path: Path) -> None:
    """copy_out_disk and a plain `qemu-img convert` of each point equal the image at that point; no vmb-* bitmaps."""
    for k, p in enumerate(built.points):
        verify_point_quick(p, vault)
        dest = tmp_path / f"restored{k}.qcow2"
        seen: list[tuple[int, int]] = []
        rec = copy_out_disk(p, "vdb", dest, progress=recorder(seen), vault=vault)
        inf = qemuimg.info(dest, fmt="qcow2")
        assert inf.backing_file is None and inf.virtual_size == SIZE
        assert images_identical(dest, built.states[k]), f"point {k} restored differently"
        assert not images_identical(dest, built.states[k - 1] if k else built.states[1])  # the check can fail
        assert [b for b in inf.bitmaps if b.startswith("vmb-")] == []
        assert seen and seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)
        assert rec.method == ("sparse-copy" if k == 0 else "qemu-img-convert")
        assert not (tmp_path / f"{dest.name}.part").exists()
        plain = tmp_path / f"plain{k}.qcow2"  # no vmbackup code: what the README tells a user
        run("qemu-img", "convert", "-O", "qcow2", str(vdb(vault, p)), str(plain))
        assert images_identical(plain, built.states[k])
        raw = tmp_path / f"vda{k}.raw"
        assert copy_out_disk(p, "vda", raw, vault=vault).method == "sparse-copy"
    full_inf = qemuimg.info(tmp_path / "restored0.qcow2", fmt="qcow2")
    assert full_inf.bitmaps == ["user-bitmap"]  # only vmbackup's own checkpoints are dropped
    assert "vmb-job0" in qemuimg.info(vdb(vault, built.points[0]), fmt="qcow2").bitmaps  # the vault keeps them


def test_verify_all_ok_then_corrupt_parent_marks_dependents(vault: Vault, built: Built, tmp_path: Path) -> None:
    """A flipped byte in point 1's file: its restore and every later point's fail naming point 1; verify marks
    1 (checksum) and 2, 3 (depends on 1); point 0 stays ok; on_point sees the final verdicts."""
    pts = built.points
    assert all(r.ok for r in vault.verify_all()), [r.to_dict() for r in vault.verify_all() if not r.ok]
    path = vdb(vault, pts[1])
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    for p in pts[1:]:
        dest = tmp_path / f"{p.point_id}.qcow2"
        with pytest.raises(ChecksumMismatch, match=f"disk vdb of point {pts[1].point_id}") as ei:
            copy_out_disk(p, "vdb", dest, vault=vault)
        assert ei.value.details["point_id"] == pts[1].point_id
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    copy_out_disk(pts[0], "vdb", tmp_path / "ok.qcow2", vault=vault)
    seen: dict[str, bool] = {}
    results = {r.point_id: r for r in vault.verify_all(on_point=lambda p, r: seen.update({p.point_id: r.ok}))}
    assert [results[p.point_id].ok for p in pts] == [True, False, False, False]
    assert seen == {p.point_id: results[p.point_id].ok for p in pts}
    assert results[pts[1].point_id].bad_disks == ["vdb"]
    for p in pts[2:]:
        assert results[p.point_id].bad_disks == []
        assert results[p.point_id].problems == [f"depends on point {pts[1].point_id}, which failed verification"]
    single = vault.verify(pts[3])  # one point alone checks its whole chain too
    assert not single.ok and single.problems == [f"depends on point {pts[1].point_id}, which failed verification"]


def test_missing_parent_is_chain_broken(vault: Vault, built: Built, tmp_path: Path) -> None:
    """Point 1 gone: restoring 2 or 3 is CHAIN_BROKEN before anything is written; verify fails 2 and 3."""
    pts = built.points
    shutil.rmtree(pts[1].path)
    out = tmp_path / "out"
    out.mkdir()
    for p in pts[2:]:
        with pytest.raises(ChainBroken, match=pts[1].point_id):
            verify_point_quick(p, vault)
        with pytest.raises(ChainBroken, match=pts[1].point_id):
            copy_out_disk(p, "vdb", out / "x.qcow2", vault=vault)
        assert list(out.iterdir()) == []
    results = {r.point_id: r for r in vault.verify_all()}
    assert results[pts[0].point_id].ok and not results[pts[2].point_id].ok and not results[pts[3].point_id].ok
    assert any("CHAIN_BROKEN" in x and pts[1].point_id in x for x in results[pts[2].point_id].problems)
    assert f"depends on point {pts[2].point_id}, which failed verification" in results[pts[3].point_id].problems


def test_backing_rewritten_is_refused(vault: Vault, built: Built) -> None:
    """A child whose qcow2 header names another backing (checksum re-recorded) fails verify and the quick check."""
    pts = built.points
    path = vdb(vault, pts[3])
    other = f"../../{pts[1].point_id}/disks/vdb.qcow2"
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", other, str(path))
    m = json.loads((pts[3].path / "manifest.json").read_text())
    m["disks"][0]["digest"] = reference_digest(path)
    (pts[3].path / "manifest.json").write_text(json.dumps(m))
    (pts[3].path / layout.SUMS).unlink()  # so only the backing check can catch it
    res = vault.verify(vault.get_point(pts[3].point_id))
    assert {d.target: d.status for d in res.disks} == {"vdb": "backing-mismatch", "vda": "ok"}
    with pytest.raises(PointCorrupt, match="backing"):
        verify_point_quick(vault.get_point(pts[3].point_id), vault)


def test_writer_refusals_leave_nothing(vault: Vault, built: Built, images: Path) -> None:
    """No such disk in the parent, another size, a wrong backing written, ENOSPC, publish without the parent."""
    parent = built.points[-1]
    nothing = incremental_write([])
    with vault.new_point(VM, point_id(10)) as w:
        with pytest.raises(ChainMismatch, match="no qcow2 copy"):
            w.add_incremental_disk("vdc", parent, nothing, "/x", SIZE)
        with pytest.raises(ChainMismatch, match="same size"):
            w.add_incremental_disk("vdb", parent, nothing, "/x", 2 * SIZE)

        def absolute(dst: Path, backing: str) -> int:
            return incremental_write([])(dst, str((dst.parent / backing).resolve()))

        with pytest.raises(ChainMismatch, match="expected a qcow2"):
            w.add_incremental_disk("vdb", parent, absolute, "/x", SIZE)

        def full_disk(dst: Path, backing: str) -> int:
            incremental_write([(0x55, 0, 1 * MiB)])(dst, backing)
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(VaultFull):
            w.add_incremental_disk("vdb", parent, full_disk, "/x", SIZE)
        assert os.listdir(w.tmp / "disks") == [] and w.disks == []
        w.add_incremental_disk("vdb", parent, nothing, "/x", SIZE)
        w.write_domain_xml("<domain/>")
        with pytest.raises(ChainMismatch, match="names parent None"):
            w.publish(fields(10))
        with pytest.raises(ChainMismatch, match="does not name that point"):
            w.publish(fields(10, parent=built.points[0].point_id))
        p = w.publish(fields(10, parent=parent.point_id, chain_depth=4))
    assert p.manifest.type == "incremental" and vault.verify(p).ok
    with vault.new_point(VM, point_id(11)) as w:
        w.copy_disk("vdb", built.live, fmt="qcow2")
        w.write_domain_xml("<domain/>")
        with pytest.raises(ChainMismatch, match="no incremental disk"):
            w.publish(fields(11, parent=p.point_id))


def test_points_cli_shows_chain(vault: Vault, built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    """`points --json` has type, parent, depth and changed bytes; the table shows full/incr and the parent."""
    assert main(["points", "--json"]) == 0
    out = {p["point_id"]: p for p in json.loads(capsys.readouterr().out)}
    pts = built.points
    assert out[pts[0].point_id]["type"] == "full" and out[pts[0].point_id]["changed_bytes"] is None
    last = out[pts[3].point_id]
    assert (last["type"], last["parent"], last["chain_depth"]) == ("incremental", pts[2].point_id, 3)
    assert last["changed_bytes"] == sum(n for _, _, n in CHANGES[2])
    assert main(["points"]) == 0  # captured, so not a terminal: plain full-width columns, one line per point
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("2026")}
    assert len(rows) == 4 and " full " in rows[pts[0].point_id]
    changed = sum(n for _, _, n in CHANGES[2])
    assert f" incr 3, +{human_size(changed)} " in rows[pts[3].point_id]
    assert f" {pts[2].point_id} " in rows[pts[3].point_id]
