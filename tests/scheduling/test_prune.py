"""prune against a real vault and state DB: dry run, deletion as a job, retained and unprotected VMs untouched."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from controller import settings
from controller.cli.main import main
from controller.jobs.store import JobStore
from controller.policies import store
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.scheduling.prune import prune
from controller.vault import Vault

NOW = datetime.now(UTC)


def _setup(conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]) -> dict[str, Any]:
    """Policy keep_last 2; web1 protected with 5 points, db1 protected then retained with 5, orphan with 3."""
    p = parse_text("name: gold\nschedule: {daily: '22:00'}\nretention: {keep_last: 2}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    web, db1 = register("web1"), register("db1")
    svc = ProtectionService(settings.load(), conn=conn)
    svc.protect(["web1", "db1"], "gold")
    for vm in (web, db1):
        for d in range(5):
            add_point(vm.vm_uuid, vm.vm_name, NOW - timedelta(days=d, hours=1))
    orphan = "0d4c2a6e-5a4f-4f7e-9d1b-0000000000aa"
    for d in range(3):
        add_point(orphan, "gone-vm", NOW - timedelta(days=d))
    svc.unprotect("db1", delete_data=False)
    return {"web": web, "db": db1, "orphan": orphan}


def test_dry_run_deletes_nothing(conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]) -> None:
    """--dry-run reports the 3 prunable points of web1 and deletes nothing; no job."""
    vms = _setup(conn, register, add_point)
    reports = {r.vm_name: r for r in prune(settings.load(), dry_run=True, conn=conn)}
    web = reports["web1"]
    assert web.selection is not None and len(web.selection.prune) == 3 and web.deleted == []
    assert reports["db1"].skipped.startswith("unprotected (data retained)")
    assert reports["gone-vm"].skipped.startswith("not protected")
    assert len(Vault(settings.load().vault).list_points(vms["web"].vm_uuid)) == 5
    assert JobStore(conn).list(type="prune") == []


def test_prune_deletes_as_a_job_and_is_idempotent(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """Real prune: web1 keeps its 2 newest; retained db1 and the unprotected VM keep all; a second run deletes 0."""
    vms = _setup(conn, register, add_point)
    vault = Vault(settings.load().vault)
    before = [p.point_id for p in vault.list_points(vms["web"].vm_uuid)]
    (web,) = [r for r in prune(settings.load(), conn=conn) if r.vm_name == "web1"]
    after = [p.point_id for p in vault.list_points(vms["web"].vm_uuid)]
    assert sorted(after) == sorted(before)[-2:] and sorted(web.deleted) == sorted(before)[:3]
    assert len(vault.list_points(vms["db"].vm_uuid)) == 5
    assert len(vault.list_points(vms["orphan"])) == 3
    job = JobStore(conn).get(web.job_id or "")
    assert (job.type, job.state, sorted(job.details["deleted"])) == ("prune", "completed", sorted(web.deleted))
    (again,) = [r for r in prune(settings.load(), vm="web1", conn=conn)]
    assert again.deleted == []


def test_prune_cli_json(conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any],
                        capsys: Any) -> None:
    """`vmbackup prune web1 --dry-run --json` lists keep/prune with reasons."""
    import json

    _setup(conn, register, add_point)
    assert main(["prune", "web1", "--dry-run", "--json"]) == 0
    (rep,) = json.loads(capsys.readouterr().out)
    assert rep["vm_name"] == "web1" and rep["dry_run"] is True
    assert [len(rep["keep"]), len(rep["prune"])] == [2, 3]
    assert rep["keep"][0]["reasons"][0] == "last #1"
