"""Retention on incremental chains: a pruned point that a kept point is built on is merged into its child.

Pure planning (retention.merge_targets / execution_order) and real prune runs on a real 6-point qcow2 chain
(tests/vault/chain_helpers.py): dry run lists the merges and changes nothing; a real run keeps every retained point
restorable (`qemu-img convert`, compared with `qemu-img compare`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import settings
from controller.cli.main import main
from controller.jobs.store import JobStore
from controller.policies import store
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.scheduling.prune import prune
from controller.scheduling.retention import PointRecord, Verdict, execution_order, merge_targets
from controller.vault import RecoveryPoint, Vault
from tests.vault.chain_helpers import build_chain, restore, same_content

T = datetime(2026, 11, 1, tzinfo=UTC)


def _rec(i: int, parent: int | None) -> PointRecord:
    """Point number i (ids sort by i), built on point `parent` (None: a full)."""
    return PointRecord(f"p{i}", T + timedelta(days=i), "CRASH", parent=None if parent is None else f"p{parent}")


def test_merge_targets_fold_pruned_runs_into_the_kept_child() -> None:
    """A(full) B C D | E(full) F G: keep B, E, G. A merges into B; C and D have no kept point built on them (E is a
    full): plain deletes; F merges into G."""
    pts = [_rec(0, None), _rec(1, 0), _rec(2, 1), _rec(3, 2), _rec(4, None), _rec(5, 4), _rec(6, 5)]
    into = merge_targets(pts, {"p1", "p4", "p6"})
    assert into == {"p0": "p1", "p5": "p6"}
    verdicts = [Verdict(p, ("x",), into.get(p.id)) for p in pts if p.id in ("p0", "p2", "p3", "p5")]
    order = [(v.point.id, v.merge_into) for v in execution_order(reversed(verdicts))]
    assert order == [("p3", None), ("p2", None), ("p0", "p1"), ("p5", "p6")]


def test_merge_targets_run_of_pruned_points_merges_one_by_one_oldest_first() -> None:
    """Six points, the newest two kept: each of the four older ones merges into its own child, oldest first."""
    pts = [_rec(0, None)] + [_rec(i, i - 1) for i in range(1, 6)]
    into = merge_targets(pts, {"p4", "p5"})
    assert into == {"p0": "p1", "p1": "p2", "p2": "p3", "p3": "p4"}
    verdicts = [Verdict(p, ("x",), into.get(p.id)) for p in reversed(pts[:4])]
    assert [v.point.id for v in execution_order(verdicts)] == ["p0", "p1", "p2", "p3"]


def _protected_chain(conn: sqlite3.Connection, register: Any, retention: str) -> tuple[Vault, list[RecoveryPoint]]:
    """web1 protected with the retention given (YAML flow mapping) and a real 6-point chain (one point a day)."""
    p = parse_text(f"name: chainy\nschedule: {{daily: '22:00'}}\nretention: {retention}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web = register("web1")
    ProtectionService(settings.load(), conn=conn).protect(["web1"], "chainy")
    vault = Vault(settings.load().vault)
    return vault, build_chain(vault, 6, vm=web.vm_uuid, name="web1")


def _views(vault: Vault, pts: list[RecoveryPoint], out: Path) -> dict[str, Path]:
    """Each point's vdb as a user restores it now."""
    out.mkdir()
    return {p.point_id: restore(vault, p.point_id, "vdb", out / f"{p.point_id}.qcow2") for p in pts}


def _snapshot(vault: Vault, vm: str) -> dict[str, tuple[bytes, dict[str, int]]]:
    """Every point's manifest bytes and its disk files' mtimes by name: what a dry run must not change."""
    out = {}
    for p in vault.list_points(vm):
        files = {f.name: f.stat().st_mtime_ns for f in (p.path / "disks").iterdir()}
        out[p.point_id] = ((p.path / "manifest.json").read_bytes(), files)
    return out


def test_dry_run_lists_merges_and_changes_nothing(
    conn: sqlite3.Connection, register: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """keep_last 2 on a 6-point chain: the dry run (API, --json, table) says the 4 older points merge, each into its
    child; nothing in the vault changes and no job runs."""
    vault, pts = _protected_chain(conn, register, "{keep_last: 2}")
    ids = [p.point_id for p in pts]
    before = _snapshot(vault, pts[0].vm_uuid)
    (rep,) = prune(settings.load(), dry_run=True, conn=conn)
    assert rep.selection is not None
    assert {v.point.id: v.merge_into for v in rep.selection.prune} == {ids[i]: ids[i + 1] for i in range(4)}
    assert main(["prune", "web1", "--dry-run", "--json"]) == 0
    (js,) = json.loads(capsys.readouterr().out)
    assert {(v["point_id"], v["action"], v["merge_into"]) for v in js["prune"]} == {
        (ids[i], "merge", ids[i + 1]) for i in range(4)
    }
    assert main(["prune", "web1", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert table.count("would merge into") == 4 and "would prune" not in table
    assert _snapshot(vault, pts[0].vm_uuid) == before
    assert JobStore(conn).list(type="prune") == []


@pytest.mark.parametrize(
    ("retention", "kept"),
    [
        ("{keep_last: 2}", [4, 5]),
        # GFS: the newest point, and the newest of each of the 2 latest ISO weeks (Nov 1 2026 is a Sunday)
        ("{keep_last: 1, keep_weekly: 2}", [0, 5]),
        ("{keep_daily: 3}", [3, 4, 5]),
    ],
)
def test_prune_merges_and_every_retained_point_restores(
    conn: sqlite3.Connection,
    register: Any,
    tmp_path: Path,
    retention: str,
    kept: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real prune of a 6-point chain: the pruned points are merged (the job says into which), every retained point
    restores exactly as before, the oldest retained one is a standalone full, and a second prune changes nothing."""
    monkeypatch.setenv("VMBACKUP_SOFT_DELETE", "0")  # deleted at once (soft delete: tests/vault/test_soft_delete*)
    vault, pts = _protected_chain(conn, register, retention)
    ids = [p.point_id for p in pts]
    before = _views(vault, pts, tmp_path / "before")
    (rep,) = prune(settings.load(), conn=conn)
    assert sorted(p.point_id for p in vault.list_points(pts[0].vm_uuid)) == [ids[i] for i in kept]
    gone = [i for i in range(6) if i not in kept]
    assert sorted(rep.deleted) == [ids[i] for i in gone]
    assert rep.merged == {ids[i]: ids[i + 1] for i in gone}  # every pruned point had a kept point built on it
    job = JobStore(conn).get(rep.job_id or "")
    assert (job.state, job.details["merged"]) == ("completed", rep.merged)
    for n, i in enumerate(kept):
        p = vault.get_point(ids[i])
        assert same_content(before[ids[i]], restore(vault, ids[i], "vdb", tmp_path / f"after-{i}.qcow2"))
        assert p.manifest.parent == (None if n == 0 else ids[kept[n - 1]])
        assert p.manifest.type == ("full" if n == 0 else "incremental")
    (again,) = prune(settings.load(), conn=conn)
    assert again.deleted == [] and again.merged == {}


def test_prune_finishes_an_interrupted_merge_first(
    conn: sqlite3.Connection, register: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge killed after the commit step is finished by the next prune job (resume_merges) before it plans."""
    from controller.vault import merge

    vault, pts = _protected_chain(conn, register, "{keep_last: 5}")
    before = _views(vault, pts, tmp_path / "before")
    real: Callable[..., Any] = merge._rename_disk

    class Crash(BaseException):
        """The controller dying."""

    def crash(*args: Any) -> None:
        raise Crash

    monkeypatch.setattr(merge, "_rename_disk", crash)
    with pytest.raises(Crash):
        vault.delete_point(pts[0])
    monkeypatch.setattr(merge, "_rename_disk", real)
    assert pts[0].point_id not in [p.point_id for p in vault.list_points(pts[0].vm_uuid)]
    (rep,) = prune(settings.load(), conn=conn)
    job = JobStore(conn).get(rep.job_id or "")
    assert job.details["resumed_merges"] == {pts[0].point_id: pts[1].point_id}
    assert rep.deleted == []  # the 5 left are all kept
    for p in pts[1:]:
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp_path / f"a-{p.point_id}.qcow2"))
    assert vault.get_point(pts[1].point_id).manifest.type == "full"
