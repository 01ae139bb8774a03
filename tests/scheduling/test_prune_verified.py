"""Prune never deletes the newest point that verified (or passed boot-check) when newer points are corrupt."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller import settings
from controller.cli.main import main
from controller.policies import store
from controller.policies.model import Retention
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.scheduling.housekeeping import verify_vault
from controller.scheduling.prune import prune
from controller.scheduling.retention import PointRecord, select_prunable
from controller.vault import RecoveryPoint, Vault
from controller.vault.verdicts import boot_checked_ok, verified_ok

NOW = datetime.now(UTC)


def _corrupt(point: RecoveryPoint) -> None:
    """Flip bytes in the middle of the point's stored disk (size unchanged)."""
    disk = point.path / point.manifest.disks[0].file
    with disk.open("r+b") as f:
        f.seek(100)
        f.write(b"\xee" * 64)


def _two_points(conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]) -> tuple[Any, ...]:
    """web1 protected with keep_last 1; an older good point and a newer one whose disk is then corrupted."""
    p = parse_text("name: one\nschedule: {daily: '22:00'}\nretention: {keep_last: 1}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web = register("web1")
    ProtectionService(settings.load(), conn=conn).protect(["web1"], "one")
    good = add_point(web.vm_uuid, "web1", NOW - timedelta(days=1))
    bad = add_point(web.vm_uuid, "web1", NOW - timedelta(hours=1))
    _corrupt(bad)
    return web, good, bad


def test_vault_verify_records_and_prune_keeps_the_only_verified_point(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """keep_last 1 with the newest point corrupt: prune keeps the older verified one, says why, deletes nothing."""
    web, good, bad = _two_points(conn, register, add_point)
    assert main(["vault", "verify"]) == 1
    vault = Vault(settings.load().vault)
    recorded = {p.point_id: p.manifest for p in vault.list_points(web.vm_uuid)}
    assert verified_ok(recorded[good.point_id]) is True and verified_ok(recorded[bad.point_id]) is False
    bad_rec = recorded[bad.point_id].verify or {}
    assert bad_rec["errors"] and "vda" in bad_rec["errors"][0] and bad_rec["at"]
    capsys.readouterr()
    assert main(["prune", "web1", "--dry-run", "--json"]) == 0
    (rep,) = json.loads(capsys.readouterr().out)
    kept = {k["point_id"]: k["reasons"] for k in rep["keep"]}
    assert kept[good.point_id] == ["newest verified point (always kept)", "newest good point"]
    assert kept[bad.point_id] == ["last #1"] and rep["prune"] == []
    (report,) = prune(settings.load(), vm="web1", conn=conn)
    assert report.deleted == []
    assert {p.point_id for p in vault.list_points(web.vm_uuid)} == {good.point_id, bad.point_id}


def test_scheduler_verify_job_records_results(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """The serve loop's verify job writes the same verify field on every point it checks."""
    web, good, bad = _two_points(conn, register, add_point)
    with pytest.raises(Exception) as ei:
        verify_vault(settings.load())
    assert getattr(ei.value, "code", "") == "POINT_CORRUPT"
    vault = Vault(settings.load().vault)
    got = {p.point_id: verified_ok(p.manifest) for p in vault.list_points(web.vm_uuid)}
    assert got == {good.point_id: True, bad.point_id: False}


def test_newest_boot_checked_point_is_kept(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """A point that passed boot-check survives keep_last 1 even behind newer unverified points."""
    p = parse_text("name: one\nschedule: {daily: '22:00'}\nretention: {keep_last: 1}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web = register("web1")
    ProtectionService(settings.load(), conn=conn).protect(["web1"], "one")
    vault = Vault(settings.load().vault)
    booted = add_point(web.vm_uuid, "web1", NOW - timedelta(days=3))
    vault.update_manifest(booted, boot_check={"result": "passed", "checked_at": NOW.isoformat()})
    failed = add_point(web.vm_uuid, "web1", NOW - timedelta(days=2))
    vault.update_manifest(failed, boot_check={"result": "failed", "reason": "no boot"})
    middle = add_point(web.vm_uuid, "web1", NOW - timedelta(days=1))
    newest = add_point(web.vm_uuid, "web1", NOW - timedelta(hours=1))
    assert boot_checked_ok(vault.get_point(failed.point_id).manifest) is False
    (report,) = prune(settings.load(), vm="web1", conn=conn)
    assert sorted(report.deleted) == sorted([failed.point_id, middle.point_id])
    left = {p.point_id for p in vault.list_points(web.vm_uuid)}
    assert left == {booted.point_id, newest.point_id}
    assert report.selection is not None
    reasons = {v.point.id: v.reasons for v in report.selection.keep}
    assert reasons[booted.point_id] == ("newest boot-checked point (always kept)",)


def _rec(pid: str, days: float, verified: bool | None = None, consistency: str = "FILE_SYSTEM") -> PointRecord:
    return PointRecord(pid, NOW - timedelta(days=days), consistency, verified=verified)


def test_failed_verify_is_not_the_newest_good_point() -> None:
    """With max_age pruning everything, the guards keep the newest verified and the newest not-known-bad point."""
    history = [_rec("a", 40, verified=False), _rec("b", 50), _rec("c", 60, verified=True), _rec("d", 70)]
    keep, prune_ = select_prunable(history, Retention(keep_last=1, max_age=timedelta(days=30)), NOW)
    assert [v.point.id for v in keep] == ["b", "c"]
    assert dict((v.point.id, v.reasons) for v in keep) == {
        "b": ("newest good point (always kept)",),
        "c": ("newest verified point (always kept)",),
    }
    assert [v.point.id for v in prune_] == ["a", "d"]
    again = select_prunable([v.point for v in keep], Retention(keep_last=1, max_age=timedelta(days=30)), NOW)
    assert again.prune == []
