"""Deleting a point that others depend on merges it into its child (controller/vault/merge.py), crash-safe.

Real chains (qemu-img + qemu-io, tests/vault/chain_helpers.py); every remaining point is checked the way a user
restores it: `qemu-img convert` of its disk, compared with `qemu-img compare` to what it restored to before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.cli.main import main
from controller.vault import RecoveryPoint, Vault, digest, layout, merge, sparse, sums
from controller.vault.exceptions import MergeFailed, PointNotFound
from tests.vault.chain_helpers import VM, add_point, build_chain, restore, same_content
from tests.vault.helpers import run


def _views(vault: Vault, points: list[RecoveryPoint], out: Path) -> dict[str, Path]:
    """Each point's vdb as restored now, by point id."""
    out.mkdir(exist_ok=True)
    return {p.point_id: restore(vault, p.point_id, "vdb", out / f"{p.point_id}.qcow2") for p in points}


def _check_restores(vault: Vault, before: dict[str, Path], tmp: Path) -> None:
    """Every point still in the vault restores to exactly what it restored to before; its records match its files."""
    left = vault.list_points(VM)
    assert left, "no point left"
    for p in left:
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp / f"after-{p.point_id}.qcow2"))
        assert not sums.check(vault.point_path(p)).errors  # SHA256SUMS still matches the (rewritten) manifest
        for rec in p.manifest.disks:  # each record describes its file: digest, size, a sound qcow2
            path = vault.disk_path(p, rec)
            got = sparse.stream(path, algo=digest.algo_of(rec.digest))
            assert (got.digest, got.logical_size) == (rec.digest, rec.logical_size), rec
            run("qemu-img", "check", "-q", "-f", rec.format, str(path))


def _backing(vault: Vault, p: RecoveryPoint) -> str | None:
    """The backing file name as written in the point's vdb header."""
    rec = p.manifest.disk("vdb")
    assert rec is not None
    info = json.loads(run("qemu-img", "info", "--output=json", str(vault.disk_path(p, rec))))
    name = info.get("backing-filename")
    return None if name is None else str(name)


def test_delete_oldest_full_of_six_merges_and_every_point_restores(vault: Vault, tmp_path: Path) -> None:
    """The full of a 6-point chain goes: its child becomes a standalone full; all five later points restore the same."""
    pts = build_chain(vault)
    before = _views(vault, pts, tmp_path / "before")
    out = vault.delete_point(pts[0])
    assert (out.action, out.into, out.child_type) == ("merged", pts[1].point_id, "full")
    assert "merged" in out.describe() and pts[1].point_id in out.describe()
    assert [p.point_id for p in vault.list_points(VM)] == [p.point_id for p in reversed(pts[1:])]
    new_oldest = vault.get_point(pts[1].point_id)
    rec = new_oldest.manifest.disk("vdb")
    assert rec is not None
    m = new_oldest.manifest
    assert (m.type, m.parent, m.chain_depth, rec.kind, rec.backing) == ("full", None, 0, "full", None)
    assert _backing(vault, new_oldest) is None
    assert vault.get_point(pts[2].point_id).manifest.parent == pts[1].point_id
    assert not any(p.name.startswith(layout.MERGE_PREFIX) for p in layout.vm_dir(vault.root, VM).iterdir())
    _check_restores(vault, before, tmp_path)


def test_delete_middle_point_and_newest(vault: Vault, tmp_path: Path) -> None:
    """A middle point merges into its child (which now backs onto the middle's parent, depth - 1); the newest point
    has no child: a plain delete."""
    pts = build_chain(vault)
    before = _views(vault, pts, tmp_path / "before")
    out = vault.delete_point(pts[2])
    assert (out.action, out.into, out.child_type) == ("merged", pts[3].point_id, "incremental")
    c = vault.get_point(pts[3].point_id)
    rec = c.manifest.disk("vdb")
    assert rec is not None
    assert (c.manifest.parent, c.manifest.chain_depth) == (pts[1].point_id, 2)
    assert rec.backing == _backing(vault, c) == f"../../{pts[1].point_id}/disks/vdb.qcow2"
    assert vault.get_point(pts[4].point_id).manifest.chain_depth == 4  # only the child's record changes
    newest = vault.delete_point(pts[5])
    assert (newest.action, newest.into) == ("deleted", None)
    assert len(vault.list_points(VM)) == 4
    _check_restores(vault, before, tmp_path)


def test_full_disk_of_child_is_untouched(vault: Vault, tmp_path: Path, qcow2_plain: Path) -> None:
    """A disk the child stored in full (not backed by the point) is neither committed nor rewritten."""
    a = add_point(vault, None, [(0x11, 0, 8)], 0, full_disks={"vdc": qcow2_plain})
    b = add_point(vault, a, [(0x22, 1, 1)], 1, full_disks={"vdc": qcow2_plain})
    vdc = b.manifest.disk("vdc")
    assert vdc is not None
    stat = vault.disk_path(b, vdc).stat()
    before = _views(vault, [b], tmp_path / "before")
    vault.delete_point(a)
    after = vault.get_point(b.point_id)
    assert after.manifest.disk("vdc") == vdc
    now = vault.disk_path(after, vdc).stat()
    assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    _check_restores(vault, before, tmp_path)


def _shape(vault: Vault, ids: list[str]) -> list[tuple[int, str, int | None, int, list[tuple[str, str]]]]:
    """The vault's points with ids replaced by their index in `ids`: (index, type, parent index, depth, disks)."""
    idx = {pid: i for i, pid in enumerate(ids)}
    return [
        (idx[p.point_id], p.manifest.type, idx[p.manifest.parent] if p.manifest.parent else None,
         p.manifest.chain_depth, [(d.target, d.kind) for d in p.manifest.disks])
        for p in vault.list_points(VM)
    ]  # fmt: skip


class Crash(BaseException):
    """A simulated controller death inside a merge step."""


STEPS = ["_write_intent", "_commit_disk", "_rename_disk", "_rewrite_child", "_drop_point", "_drop_intent"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("victim", [0, 2])
def test_crash_in_each_step_then_resume_ends_in_the_same_state(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, when: str, victim: int
) -> None:
    """A crash before or after the first call of any step, then resume_merges: the same vault as an uninterrupted
    merge (or, crashed before the intent was written, the vault untouched); while the intent exists the point is
    neither listed nor loadable."""
    pts = build_chain(vault, 4)
    ids = [p.point_id for p in pts]
    before = _views(vault, pts, tmp_path / "before")
    untouched = _shape(vault, ids)
    real: Callable[..., Any] = getattr(merge, step)

    def crashing(*args: Any) -> Any:
        if when == "after":
            real(*args)
        raise Crash

    monkeypatch.setattr(merge, step, crashing)
    with pytest.raises(Crash):
        vault.delete_point(pts[victim])
    monkeypatch.setattr(merge, step, real)
    intent = layout.merge_intent_path(vault.root, VM, ids[victim])
    pending = intent.exists()
    merged = (step, when) != ("_write_intent", "before")  # else the crash came before the intent existed
    assert pending == (merged and (step, when) != ("_drop_intent", "after"))
    if pending:
        assert ids[victim] not in [p.point_id for p in vault.list_points(VM)]
        with pytest.raises(PointNotFound, match="being merged" if (vault.root / VM / ids[victim]).is_dir() else None):
            vault.get_point(ids[victim])
    done = merge.resume_merges(vault)
    assert [d.point_id for d in done] == ([ids[victim]] if pending else [])
    assert not intent.exists() and not (vault.root / VM / f".tmp-{ids[victim]}").exists()
    if not merged:
        assert _shape(vault, ids) == untouched
    else:
        clean = Vault(tmp_path / "clean-vault")
        ref = build_chain(clean, 4)
        clean.delete_point(ref[victim])
        assert _shape(vault, ids) == _shape(clean, [p.point_id for p in ref])
        assert ids[victim] not in [p.point_id for p in vault.list_points(VM)]
    _check_restores(vault, before, tmp_path)


def test_resume_finishes_when_deleting_again(vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted merge is finished by the next delete of the same point (vault delete / prune call it)."""
    pts = build_chain(vault, 3)
    before = _views(vault, pts, tmp_path / "before")
    real = merge._rewrite_child

    def crash(*args: Any) -> Any:
        raise Crash

    monkeypatch.setattr(merge, "_rewrite_child", crash)
    with pytest.raises(Crash):
        vault.delete_point(pts[0])
    monkeypatch.setattr(merge, "_rewrite_child", real)
    out = vault.delete_point(pts[0])
    assert (out.action, out.into) == ("merged", pts[1].point_id)
    _check_restores(vault, before, tmp_path)


def test_vault_delete_cli_says_merged(
    vault: Vault, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vmbackup vault delete POINT` says when the delete became a merge; --json carries action and into."""
    monkeypatch.setenv("VMBACKUP_SOFT_DELETE", "0")  # deleted at once (soft delete: tests/vault/test_soft_delete*)
    pts = build_chain(vault, 3)
    assert main(["vault", "delete", pts[0].point_id]) == 0
    text = capsys.readouterr().out
    assert f"merged point {pts[0].point_id} into {pts[1].point_id}" in text
    assert main(["vault", "delete", pts[2].point_id, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["action"], got["point_id"], got["into"]) == ("deleted", pts[2].point_id, None)
    assert [p.point_id for p in vault.list_points(VM)] == [pts[1].point_id]


def test_merge_cost_is_the_childs_changed_bytes(vault: Vault, tmp_path: Path) -> None:
    """The merge writes the child's clusters into the point's file, so the file grows by about the child's data."""
    a = add_point(vault, None, [(0x11, 0, 48)], 0)
    b = add_point(vault, a, [(0x22, 2, 1)], 1)
    rec_a, rec_b = a.manifest.disk("vdb"), b.manifest.disk("vdb")
    assert rec_a is not None and rec_b is not None
    vault.delete_point(a)
    rec = vault.get_point(b.point_id).manifest.disk("vdb")
    assert rec is not None
    # 1 MiB of C's data overwrote clusters A already had: the merged file is about A's size, not A + a copy
    assert rec.stored_bytes <= rec_a.stored_bytes + rec_b.stored_bytes
    assert rec.stored_bytes < rec_a.stored_bytes + (2 << 20)


def test_vault_delete_cli_finishes_an_interrupted_merge(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vault delete P` for a point whose merge was interrupted finishes it (the point is hidden meanwhile)."""
    pts = build_chain(vault, 3)
    before = _views(vault, pts, tmp_path / "before")
    real = merge._commit_disk

    def crash(*args: Any) -> None:
        raise Crash

    monkeypatch.setattr(merge, "_commit_disk", crash)
    with pytest.raises(Crash):
        vault.delete_point(pts[1])
    monkeypatch.setattr(merge, "_commit_disk", real)
    assert main(["vault", "delete", pts[1].point_id]) == 0
    assert f"merged point {pts[1].point_id} into {pts[2].point_id}" in capsys.readouterr().out
    assert [p.point_id for p in vault.list_points(VM)] == [pts[2].point_id, pts[0].point_id]
    _check_restores(vault, before, tmp_path)


def test_missing_parent_file_refuses_before_anything_changes(vault: Vault) -> None:
    """A point whose disk file is gone is not merged (MERGE_FAILED, no intent): the child keeps its manifest."""
    pts = build_chain(vault, 2)
    rec = pts[0].manifest.disk("vdb")
    assert rec is not None
    vault.disk_path(pts[0], rec).unlink()
    with pytest.raises(MergeFailed, match="missing"):
        vault.delete_point(pts[0])
    assert not layout.merge_intent_path(vault.root, VM, pts[0].point_id).exists()
    assert vault.get_point(pts[1].point_id).manifest == pts[1].manifest
