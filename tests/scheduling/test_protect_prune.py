"""Protected points against retention: prune (and its dry run) keeps a protected point and its chain back to the full
while merging the rest around it, a policy's protect_newest keeps the newest N good points through a prune (and
lets them go once lowered), and `unprotect --delete-data` refuses up front while any point is protected."""

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
from controller.policies import store
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.scheduling.prune import prune
from controller.vault import RecoveryPoint, Vault, layout, protect
from controller.vault.exceptions import PointProtected
from tests.vault.chain_helpers import build_chain, restore, same_content

T = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def _policy(conn: sqlite3.Connection, register: Any, body: str) -> str:
    """Save policy 'prot' (YAML flow body after the schedule), register web1 and protect it; its uuid."""
    p = parse_text(f"name: prot\nschedule: {{daily: '22:00'}}\n{body}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web = register("web1")
    ProtectionService(settings.load(), conn=conn).protect(["web1"], "prot")
    return web.vm_uuid


def test_prune_keeps_a_protected_point_and_its_chain(
    conn: sqlite3.Connection, register: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keep_last 1 on a 6-point chain with point 2 protected: points 0-2 stay untouched (its chain), 3 and 4 are
    pruned (merged forward into 5, or soft-deleted); every kept point restores as before; unprotected, the next
    prune lets 0-2 go too."""
    vm = _policy(conn, register, "retention: {keep_last: 1}")
    vault = Vault(settings.load().vault)
    pts = build_chain(vault, 6, vm=vm, name="web1")
    ids = [p.point_id for p in pts]
    before = {i: restore(vault, ids[i], "vdb", tmp_path / f"b{i}.qcow2") for i in (0, 1, 2, 5)}
    protect.protect(vault, pts[2], "legal hold")
    files = {i: sorted((f.name, f.stat().st_ino) for f in (pts[i].path / "disks").iterdir()) for i in range(3)}
    assert main(["prune", "web1", "--dry-run", "--json"]) == 0
    (js,) = json.loads(capsys.readouterr().out)
    kept = {v["point_id"]: v["reasons"] for v in js["keep"]}
    assert sorted(kept) == [ids[0], ids[1], ids[2], ids[5]]
    assert kept[ids[2]] == ["protected (user): legal hold (always kept)"]
    assert kept[ids[0]] == [f"protected: parent of protected point {ids[2]} (always kept)"]
    assert {v["point_id"]: v["merge_into"] for v in js["prune"]} == {ids[3]: ids[4], ids[4]: ids[5]}
    assert main(["prune", "web1", "--dry-run"]) == 0
    assert "protected (user): legal hold" in capsys.readouterr().out

    (rep,) = prune(settings.load(), conn=conn)
    assert sorted(rep.deleted) == [ids[3], ids[4]]
    assert sorted(p.point_id for p in vault.list_points(vm)) == [ids[0], ids[1], ids[2], ids[5]]
    assert {i: sorted((f.name, f.stat().st_ino) for f in (pts[i].path / "disks").iterdir()) for i in range(3)} == files
    for i, ref in before.items():
        assert same_content(ref, restore(vault, ids[i], "vdb", tmp_path / f"a{i}.qcow2")), i

    protect.unprotect(vault, vault.get_point(ids[2]))
    (rep,) = prune(settings.load(), conn=conn)
    assert [p.point_id for p in vault.list_points(vm)] == [ids[5]]
    assert same_content(before[5], restore(vault, ids[5], "vdb", tmp_path / "last.qcow2"))


def test_protect_newest_keeps_n_good_points_through_prune(
    conn: sqlite3.Connection,
    register: Any,
    add_point: Callable[..., RecoveryPoint],
) -> None:
    """keep_last 1 + protect_newest 2: the newest 2 good (non-CRASH, not failed) points survive the prune with a
    policy record each, a CRASH point and a failed-verify one are not counted; without protect_newest they go."""
    vm = _policy(conn, register, "retention: {keep_last: 1}\nprotect_newest: 2")
    vault = Vault(settings.load().vault)
    made = [add_point(vm, "web1", T + timedelta(days=i), "CRASH" if i == 3 else "FILE_SYSTEM") for i in range(5)]
    ids = [p.point_id for p in made]
    vault.update_manifest(made[4], verify={"ok": False, "at": T.isoformat(), "errors": ["vda: checksum-mismatch"]})
    # good, newest first: 2, 1 (3 is CRASH, 4 failed verify); keep_last 1 keeps 4
    (dry,) = prune(settings.load(), dry_run=True, conn=conn)
    assert dry.selection is not None
    assert sorted(v.point.id for v in dry.selection.keep) == [ids[1], ids[2], ids[4]]
    assert not list(layout.vm_dir(vault.root, vm).glob(".protect-*"))  # a dry run writes nothing
    (rep,) = prune(settings.load(), conn=conn)
    assert sorted(rep.deleted) == [ids[0], ids[3]]
    assert sorted(p.point_id for p in vault.list_points(vm)) == [ids[1], ids[2], ids[4]]
    recs = protect.records(vault.root, vm)
    assert sorted(recs) == [ids[1], ids[2]] and all(r[0].holder == "policy" for r in recs.values())
    assert recs[ids[1]][0].policy == "prot"
    with pytest.raises(PointProtected):  # a policy-protected point refuses a manual delete too
        vault.delete_point(vault.get_point(ids[1]))
    (again,) = prune(settings.load(), conn=conn)
    assert again.deleted == []

    p = parse_text("name: prot\nschedule: {daily: '22:00'}\nretention: {keep_last: 1}\n")[0]
    store.save_policy(conn, p, to_yaml(p), replace=True)
    (rep,) = prune(settings.load(), conn=conn)
    assert rep.deleted == [ids[1]]  # 2 stays as the newest good point (retention's own guard), 4 as last #1
    assert protect.records(vault.root, vm) == {}


def test_unprotect_delete_data_refused_while_a_point_is_protected(conn: sqlite3.Connection, register: Any) -> None:
    vm = _policy(conn, register, "retention: {keep_last: 5}")
    vault = Vault(settings.load().vault)
    pts = build_chain(vault, 3, vm=vm, name="web1")
    protect.protect(vault, pts[1])
    svc = ProtectionService(settings.load(), conn=conn)
    with pytest.raises(PointProtected) as e:
        svc.unprotect("web1", delete_data=True)
    assert pts[1].point_id in e.value.message and pts[0].point_id in e.value.message
    assert "nothing was changed" in e.value.message
    assert len(vault.list_points(vm)) == 3
    prot = store.get_protection(conn, vm)
    assert prot is not None and prot.active  # still protected, schedule untouched
    assert main(["unprotect", "web1", "--delete-data", "--yes"]) == 1
