"""Soft delete (controller/vault/recycle.py): a deleted point is hidden but kept until it is purged.

Real incremental chains (tests/vault/chain_helpers.py); a point is checked the way a user restores it: `qemu-img
convert` of its disk, compared with `qemu-img compare` to what it restored to before.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.cli.main import main
from controller.vault import RecoveryPoint, Vault, layout, merge, pins, recycle
from controller.vault.copyout import copy_out_disk
from controller.vault.exceptions import PointDeleted, PointPinned, UndeleteRefused
from tests.vault.chain_helpers import VM, build_chain, restore, same_content

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _views(vault: Vault, points: list[RecoveryPoint], out: Path) -> dict[str, Path]:
    """Each point's vdb as restored now, by point id."""
    out.mkdir(exist_ok=True)
    return {p.point_id: restore(vault, p.point_id, "vdb", out / f"{p.point_id}.qcow2") for p in points}


def _ids(points: list[RecoveryPoint]) -> list[str]:
    """Point ids, in the order given."""
    return [p.point_id for p in points]


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run a CLI command with --json; its parsed output (exit code 0 asserted)."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_soft_delete_hides_keeps_files_and_undelete_brings_it_back(vault: Vault, tmp_path: Path) -> None:
    """A soft-deleted middle point: hidden from list/get, its files and tombstone there, its child still restores
    through it; listed as deleted with when/by/purge time; usage counts it apart; undelete makes it restorable."""
    pts = build_chain(vault, 3)
    before = _views(vault, pts, tmp_path / "before")
    files = sorted(str(p.relative_to(vault.root)) for p in vault.root.rglob("*") if p.is_file())
    out = vault.delete_point(pts[1], 14, by="vault delete")
    assert (out.action, out.into) == ("soft-deleted", None)
    assert out.purge_after is not None and "vault undelete" in out.describe()
    assert _ids(vault.list_points(VM)) == [pts[2].point_id, pts[0].point_id]
    assert pts[1].point_id in _ids(vault.list_points(VM, include_deleted=True))
    with pytest.raises(PointDeleted):
        vault.get_point(pts[1].point_id)
    tomb = json.loads(layout.tombstone_path(vault.root, VM, pts[1].point_id).read_text())
    assert tomb["by"] == "vault delete" and tomb["purge_after"] == out.purge_after
    deleted_at = datetime.fromisoformat(tomb["deleted_at"])
    assert datetime.fromisoformat(tomb["purge_after"]) - deleted_at == timedelta(days=14)
    after = sorted(str(p.relative_to(vault.root)) for p in vault.root.rglob("*") if p.is_file())
    assert sorted(set(after) - set(files)) == [f"{VM}/.deleted-{pts[1].point_id}.json"]  # nothing else changed
    assert same_content(before[pts[2].point_id], restore(vault, pts[2].point_id, "vdb", tmp_path / "c.qcow2"))
    child = vault.get_point(pts[2].point_id)  # vmbackup's own restore and verify walk the chain through it
    copy_out_disk(child, "vdb", tmp_path / "c-vmb.qcow2", vault=vault)
    assert same_content(before[pts[2].point_id], tmp_path / "c-vmb.qcow2") and vault.verify(child).ok
    (d,) = recycle.list_deleted(vault)
    assert (d.point_id, d.tombstone and d.tombstone.by, d.error) == (pts[1].point_id, "vault delete", "")
    u = vault.usage()["vms"][VM]
    assert (u["points"], u["deleted_points"]) == (2, 1)
    assert u["deleted_bytes"] == d.stored_bytes > 0 and vault.usage()["deleted_bytes"] == d.stored_bytes
    back = recycle.undelete(vault, pts[1].point_id)
    assert back.point_id == pts[1].point_id and not recycle.list_deleted(vault)
    assert _ids(vault.list_points(VM)) == _ids(list(reversed(pts)))
    for p in pts:
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp_path / f"u-{p.point_id}.qcow2"))
    with pytest.raises(UndeleteRefused, match="not deleted"):
        recycle.undelete(vault, pts[1].point_id)


def test_cli_delete_points_deleted_usage_undelete(vault: Vault, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI: `vault delete` soft-deletes (default 14 days), `points --deleted` lists it, `vault usage` counts it,
    `vault undelete` brings it back; deleting it twice or undeleting a point that is there are clear errors."""
    pts = build_chain(vault, 2)
    pid = pts[1].point_id
    got = _cli_json(capsys, "vault", "delete", pid)
    assert (got["action"], got["point_id"]) == ("soft-deleted", pid)
    assert pid not in [p["point_id"] for p in _cli_json(capsys, "points")]
    (listed,) = _cli_json(capsys, "points", "--deleted")
    assert (listed["point_id"], listed["deleted_by"]) == (pid, "vault delete")
    assert listed["purge_after"] == got["purge_after"]
    assert listed["stored_bytes"] > 0
    assert _cli_json(capsys, "vault", "usage")["deleted_bytes"] == listed["stored_bytes"]
    assert main(["points", "--deleted"]) == 0 and pid in capsys.readouterr().out
    assert main(["vault", "delete", pid]) == 1 and "POINT_DELETED" in capsys.readouterr().err
    assert main(["vault", "verify", pid]) == 1 and "POINT_DELETED" in capsys.readouterr().err
    assert _cli_json(capsys, "vault", "undelete", pid)["undeleted"] is True
    assert _cli_json(capsys, "points", "--deleted") == []
    assert main(["vault", "undelete", pid]) == 1 and "UNDELETE_REFUSED" in capsys.readouterr().err


def test_purge_waits_for_soft_delete_days_then_merges_into_the_child(vault: Vault, tmp_path: Path) -> None:
    """The full of a 3-point chain, soft-deleted: not purged before its 14 days; then merged into its child (which
    becomes a full and restores as before), tombstone gone, undelete refused (purged)."""
    pts = build_chain(vault, 3)
    before = _views(vault, pts, tmp_path / "before")
    recycle.soft_delete(vault, VM, pts[0].point_id, 14, "vault delete", now=NOW)
    early = recycle.purge(vault, now=NOW + timedelta(days=13, hours=23))
    assert (early.purged, early.waiting) == ([], 1)
    assert layout.point_dir(vault.root, VM, pts[0].point_id).is_dir()
    report = recycle.purge(vault, now=NOW + timedelta(days=14))
    assert (report.purged, report.merged, report.skipped) == ([pts[0].point_id], {pts[0].point_id: pts[1].point_id}, {})
    assert not layout.point_dir(vault.root, VM, pts[0].point_id).exists()
    assert not layout.tombstone_path(vault.root, VM, pts[0].point_id).exists()
    assert vault.get_point(pts[1].point_id).manifest.type == "full"
    for p in pts[1:]:
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp_path / f"a-{p.point_id}.qcow2"))
    with pytest.raises(UndeleteRefused, match="purged"):
        recycle.undelete(vault, pts[0].point_id)


def test_purge_two_deleted_points_below_a_kept_one(
    vault: Vault, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Full and first incremental soft-deleted, the newest kept: `vault purge --now` merges both into it (newest
    first), and it restores as before; the deleted newest point of another chain is a plain delete."""
    pts = build_chain(vault, 3)
    before = _views(vault, pts, tmp_path / "before")
    for p in pts[:2]:
        vault.delete_point(p, 14, by="vault delete")
    got = _cli_json(capsys, "vault", "purge", "--now")
    assert got["purged"] == [pts[1].point_id, pts[0].point_id] and got["skipped"] == {}
    assert set(got["merged"].values()) == {pts[2].point_id}
    assert _ids(vault.list_points(VM, include_deleted=True)) == [pts[2].point_id]
    assert same_content(before[pts[2].point_id], restore(vault, pts[2].point_id, "vdb", tmp_path / "c.qcow2"))
    assert vault.get_point(pts[2].point_id).manifest.type == "full"
    vault.delete_point(vault.get_point(pts[2].point_id), 14, by="vault delete")
    assert _cli_json(capsys, "vault", "purge", "--now") == {"purged": [pts[2].point_id], "merged": {}, "skipped": {},
                                                            "waiting": 0}  # fmt: skip
    assert vault.list_points(VM, include_deleted=True) == [] and vault.usage()["vms"][VM]["deleted_bytes"] == 0


def test_soft_delete_days_zero_deletes_at_once(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """soft_delete_days 0 (VMBACKUP_SOFT_DELETE=0): `vault delete` merges or deletes at once, no tombstone."""
    pts = build_chain(vault, 2)
    monkeypatch.setenv("VMBACKUP_SOFT_DELETE", "0")
    got = _cli_json(capsys, "vault", "delete", pts[0].point_id)
    assert (got["action"], got["into"]) == ("merged", pts[1].point_id)
    assert vault.delete_point(vault.get_point(pts[1].point_id), 0).action == "deleted"
    assert not list(vault.root.joinpath(VM).glob(".deleted-*"))
    assert vault.list_points(VM, include_deleted=True) == []
    monkeypatch.setenv("VMBACKUP_SOFT_DELETE", "two weeks")
    assert main(["vault", "delete", pts[0].point_id]) == 1 and "INVALID_ARGUMENT" in capsys.readouterr().err


def test_interrupted_purge_is_resumed_and_undelete_refused(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge killed in the middle of its merge: the point stays hidden, undelete refuses it (the merge is finished
    first: purged), and the next purge drops the tombstone; the child restores as before."""
    pts = build_chain(vault, 2)
    before = _views(vault, pts, tmp_path / "before")
    vault.delete_point(pts[0], 14, by="prune")

    class Crash(BaseException):
        """The controller dying."""

    def crash(*args: Any) -> None:
        raise Crash

    real = merge._rename_disk
    monkeypatch.setattr(merge, "_rename_disk", crash)
    with pytest.raises(Crash):
        recycle.purge(vault, everything=True)
    monkeypatch.setattr(merge, "_rename_disk", real)
    assert layout.tombstone_path(vault.root, VM, pts[0].point_id).exists()
    with pytest.raises(UndeleteRefused, match="purged"):
        recycle.undelete(vault, pts[0].point_id)
    (d,) = recycle.list_deleted(vault)
    assert "gone" in d.error
    report = recycle.purge(vault)  # not due, but its files are gone: the record goes
    assert report.purged == [pts[0].point_id] and not recycle.list_deleted(vault)
    assert same_content(before[pts[1].point_id], restore(vault, pts[1].point_id, "vdb", tmp_path / "c.qcow2"))


def test_pinned_points_are_neither_soft_deleted_nor_purged(vault: Vault) -> None:
    """A point a VM runs on (a pin): soft delete refuses it (POINT_PINNED); a soft-deleted parent of a pinned point is
    skipped by purge with the reason, and purged once the pin is gone."""
    pts = build_chain(vault, 2)
    vault.delete_point(pts[0], 14, by="vault delete")
    pin = pins.Pin(VM, pts[1].point_id, "web-now", chain=_ids(pts))
    pins.hold(vault.root, pin)
    with pytest.raises(PointPinned):
        vault.delete_point(pts[1], 14, by="vault delete")
    report = recycle.purge(vault, everything=True)
    assert report.purged == [] and "POINT_PINNED" in report.skipped[pts[0].point_id]
    assert layout.tombstone_path(vault.root, VM, pts[0].point_id).exists()
    pins.release(vault.root, pin)
    assert recycle.purge(vault, everything=True).purged == [pts[0].point_id]
