"""Soft delete through retention, unprotect --delete-data, serve's housekeeping, the dashboard and the chain rule of
the next backup (controller/vault/recycle.py). Real points in a real vault and state DB, no VM."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller import settings
from controller.backup import cbt
from controller.dashboard.model import _vault_view
from controller.jobs.store import JobStore
from controller.policies import store
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.scheduling.housekeeping import prune_pass
from controller.scheduling.prune import prune
from controller.vault import RecoveryPoint, Vault, recycle
from controller.virt.domain import Disk
from tests import fixtures_state
from tests.vault.chain_helpers import build_chain, restore, same_content
from tests.vault.helpers import run

conn, register = fixtures_state.conn, fixtures_state.register  # the state DB and registration fixtures


def _protected_chain(conn: sqlite3.Connection, register: Any, retention: str, n: int = 4) -> tuple[Vault, list[Any]]:
    """web1 protected with the retention given (YAML flow mapping) and a real n-point chain (one point a day)."""
    p = parse_text(f"name: soft\nschedule: {{daily: '22:00'}}\nretention: {retention}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web = register("web1")
    ProtectionService(settings.load(), conn=conn).protect(["web1"], "soft")
    vault = Vault(settings.load().vault)
    return vault, build_chain(vault, n, vm=web.vm_uuid, name="web1")


def _ids(points: list[RecoveryPoint]) -> list[str]:
    """Point ids, in the order given."""
    return [p.point_id for p in points]


def test_prune_soft_deletes_and_undelete_after_prune(conn: sqlite3.Connection, register: Any, tmp_path: Path) -> None:
    """keep_last 2 on a 4-point chain: the 2 oldest are soft-deleted (not merged, files kept, said in the job), a
    second prune does not count or touch them; one is undeleted and restores as before; purge merges the other."""
    vault, pts = _protected_chain(conn, register, "{keep_last: 2}")
    vm = pts[0].vm_uuid
    before = {p.point_id: restore(vault, p.point_id, "vdb", tmp_path / f"b-{p.point_id}.qcow2") for p in pts}
    (rep,) = prune(settings.load(), conn=conn)
    assert sorted(rep.deleted) == sorted(rep.soft_deleted) == sorted(_ids(pts[:2])) and rep.merged == {}
    assert JobStore(conn).get(rep.job_id or "").details["soft_deleted"] == rep.soft_deleted
    assert _ids(vault.list_points(vm)) == _ids(pts[:1:-1])
    assert [d.tombstone and d.tombstone.by for d in recycle.list_deleted(vault)] == ["prune", "prune"]
    for p in pts[2:]:  # the kept points still restore through their soft-deleted parents
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp_path / f"k-{p.point_id}.qcow2"))
    (again,) = prune(settings.load(), conn=conn)
    assert again.deleted == [] and len(recycle.list_deleted(vault)) == 2
    recycle.undelete(vault, pts[1].point_id)
    assert _ids(vault.list_points(vm)) == _ids(pts[:0:-1])
    assert same_content(before[pts[1].point_id], restore(vault, pts[1].point_id, "vdb", tmp_path / "u.qcow2"))
    report = recycle.purge(vault, everything=True)
    assert report.merged == {pts[0].point_id: pts[1].point_id}
    for p in pts[1:]:
        assert same_content(before[p.point_id], restore(vault, p.point_id, "vdb", tmp_path / f"a-{p.point_id}.qcow2"))


def test_unprotect_delete_data_soft_deletes(conn: sqlite3.Connection, register: Any) -> None:
    """unprotect --delete-data: every point soft-deleted by "unprotect" (none listed, all in the recycle area)."""
    vault, pts = _protected_chain(conn, register, "{keep_last: 9}", n=2)
    out = ProtectionService(settings.load(), conn=conn).unprotect("web1", delete_data=True)
    assert sorted(out.deleted_points) == sorted(_ids(pts))
    assert vault.list_points(pts[0].vm_uuid) == []
    assert {(d.point_id, d.tombstone and d.tombstone.by) for d in recycle.list_deleted(vault)} == {
        (p.point_id, "unprotect") for p in pts}  # fmt: skip
    recycle.undelete(vault, pts[0].point_id)
    assert _ids(vault.list_points(pts[0].vm_uuid)) == [pts[0].point_id]


def test_housekeeping_purges_only_due_points(conn: sqlite3.Connection, register: Any) -> None:
    """serve's prune pass purges the soft-deleted points whose time has come (of any VM), not the others."""
    vault, pts = _protected_chain(conn, register, "{keep_last: 9}", n=3)
    vm = pts[0].vm_uuid
    recycle.soft_delete(vault, vm, pts[2].point_id, 14, "vault delete", now=datetime.now(UTC) - timedelta(days=15))
    recycle.soft_delete(vault, vm, pts[1].point_id, 14, "vault delete")
    _, _, text = prune_pass(settings.load(), [vm])
    assert "purged 1 soft-deleted point(s)" in text
    assert [d.point_id for d in recycle.list_deleted(vault)] == [pts[1].point_id]
    assert _ids(vault.list_points(vm, include_deleted=True)) == _ids(pts[1::-1])


def test_dashboard_shows_soft_deleted_bytes(register: Any) -> None:
    """The dashboard's vault view carries the bytes of soft-deleted points apart from the total."""
    vault = Vault(settings.load().vault)
    pts = build_chain(vault, 2, vm=register("web1").vm_uuid)
    assert _vault_view(vault, 2)["deleted_bytes"] == 0
    vault.delete_point(pts[1], 14, by="vault delete")
    view = _vault_view(vault, 1)
    assert 0 < view["deleted_bytes"] < view["total_bytes"]
    assert view["deleted_bytes"] == recycle.deleted_bytes(vault)


class _Dom:
    """The one thing plan_chain asks a domain before it looks at the vault: its uuid."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid

    def UUIDString(self) -> str:
        """The domain's uuid."""
        return self.uuid


def test_newest_point_deleted_makes_the_next_backup_a_full(register: Any, tmp_path: Path) -> None:
    """A soft-deleted newest point is never built beside (that would fork the linear chain): the next backup is a
    full saying why. An older deleted point changes nothing; undeleting the newest lifts the rule."""
    vault = Vault(settings.load().vault)
    vm = register("web1").vm_uuid
    pts = build_chain(vault, 3, vm=vm)
    disk = tmp_path / "vdb.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M")
    ds = [Disk("vdb", str(disk), "qcow2")]
    vault.delete_point(pts[1], 14, by="vault delete")
    assert recycle.newest_deleted(vault, vm) is None
    vault.delete_point(pts[2], 14, by="prune")
    assert recycle.newest_deleted(vault, vm) == pts[2].point_id
    plan = cbt.plan_chain(None, vault, _Dom(vm), ds)  # type: ignore[arg-type]
    assert (plan.parent, plan.full_reason) == (None, f"newest point {pts[2].point_id} was deleted")
    recycle.undelete(vault, pts[2].point_id)
    assert recycle.newest_deleted(vault, vm) is None
