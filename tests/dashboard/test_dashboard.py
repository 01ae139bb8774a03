"""The dashboard from real state: jobs in state.db, published vault points, protections; plus the CLI output."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import db, settings
from controller.dashboard import build
from controller.errors import VmBackupError
from controller.jobs.store import JobStore, VmRef
from controller.policies.parse import parse_text, to_yaml
from controller.policies.store import bind, save_policy, set_retain
from controller.registration.store import save
from controller.restore.bootcheck import BootCheckResult
from controller.vault import Vault, new_point_id
from tests.helpers import made_up_registration


@pytest.fixture
def home(private_settings: settings.Settings) -> settings.Settings:
    """The shared private home's settings."""
    return private_settings


def register(conn: Any, name: str) -> str:
    """A registrations row for a made-up VM; returns its uuid."""
    reg = made_up_registration(name, agent_port=1, ssh_port=2)
    save(conn, reg)
    return reg.vm_uuid


def point(home: settings.Settings, tmp: Path, vm_uuid: str, name: str, created: datetime, cons: str) -> str:
    """Publish a real point with a tiny raw disk; returns its id."""
    src = tmp / "d.raw"
    src.write_bytes(b"\x07" * 4096)
    with Vault(home.vault).new_point(vm_uuid, new_point_id(created)) as w:
        w.copy_disk("vda", src, fmt="raw")
        w.write_domain_xml(f"<domain><name>{name}</name><uuid>{vm_uuid}</uuid></domain>")
        p = w.publish({"vm": {"uuid": vm_uuid, "name": name, "host": "qemu:///system"},
                       "consistency": cons, "created": created.isoformat(timespec="seconds")})
    return p.point_id


def backup_job(jobs: JobStore, vm_uuid: str, name: str, fail: bool = False) -> str:
    """A finished backup job (completed, or failed with a typed error)."""
    job = jobs.create("backup", vm=VmRef(vm_uuid, name, "qemu:///system"))
    try:
        with jobs.run(job.id):
            if fail:
                raise VmBackupError("agent did not answer")
    except VmBackupError:
        pass
    return job.id


def test_dashboard_counts_points_and_attention(home: settings.Settings, tmp_path: Path) -> None:
    """Counts, newest point with age and boot-check, failed last backup, overdue VM, retained VM, vault usage."""
    conn = db.connect(home.db_path)
    jobs = JobStore(conn)
    for text in ("name: daily\nschedule: {daily: '02:00'}\n", "name: often\nschedule: {every_minutes: 5}\n"):
        p = parse_text(text)[0]
        save_policy(conn, p, to_yaml(p))
    now = datetime.now(UTC)
    web, db1, old, idle = (register(conn, n) for n in ("web1", "db1", "old1", "idle1"))
    bind(conn, web, "web1", "daily")
    bind(conn, db1, "db1", "often")
    bind(conn, old, "old1", "often")
    set_retain(conn, old)
    conn.execute("UPDATE protections SET since = ?", ((now - timedelta(days=3)).isoformat(),))
    point(home, tmp_path, web, "web1", now - timedelta(days=2), "CRASH")
    newest = point(home, tmp_path, web, "web1", now - timedelta(hours=3), "FILE_SYSTEM")
    vault = Vault(home.vault)
    # the manifest's boot_check is what a real boot-check writes (BootCheckResult.to_dict: "result": "passed")
    verdict = BootCheckResult(point_id=newest, job_id="j1", vm_name="web1", passed=True).to_dict()
    vault.update_manifest(vault.get_point(newest), boot_check=verdict)
    point(home, tmp_path, db1, "db1", now - timedelta(minutes=2), "APPLICATION")
    backup_job(jobs, web, "web1")
    backup_job(jobs, db1, "db1", fail=True)
    jobs.create("backup", vm=VmRef(idle, "idle1", "qemu:///system"))  # queued: in progress
    d = build(home, now=datetime.now(UTC)).to_dict()

    assert d["vms"] == {"known": 4, "registered": 4, "protected": 2, "unprotected": 2, "retained": 1}
    assert d["jobs_24h"]["succeeded"] == 1 and d["jobs_24h"]["failed"] == 1 and d["jobs_24h"]["in_progress"] == 1
    assert d["jobs_24h"]["by_type"]["backup"]["failed"] == 1
    rows = {r["vm_name"]: r for r in d["rows"]}
    assert rows["web1"]["last_point"]["point_id"] == newest and rows["web1"]["points"] == 2
    assert rows["web1"]["last_point"]["consistency"] == "FILE_SYSTEM"
    assert 3 * 3600 - 60 < rows["web1"]["last_point"]["age_s"] < 3 * 3600 + 60
    assert rows["web1"]["last_point"]["boot_check"]["passed"] is True
    # daily 02:00 UTC with a point 3 h old: overdue only if a 02:00 slot passed > 10 min after that point
    slot_passed = (now - timedelta(hours=3)).date() != now.date() and now.hour * 60 + now.minute > 2 * 60 + 10
    assert bool(rows["web1"]["attention"]) == slot_passed, rows["web1"]
    assert rows["db1"]["attention"] == ["last backup failed: INTERNAL_ERROR"]
    assert rows["old1"]["protection"] == "unprotected-retain" and rows["old1"]["attention"] == []
    assert rows["idle1"]["last_backup"]["state"] == "queued" and rows["idle1"]["protection"] is None
    assert d["vault"]["points"] == 3 and d["vault"]["total_bytes"] > 0
    assert {a["vm_name"] for a in d["attention"]} == {"db1"} | ({"web1"} if slot_passed else set())


def test_overdue_when_schedule_allows_no_point_this_old(home: settings.Settings, tmp_path: Path) -> None:
    """every 5 min, newest point 40 min old: overdue; a fresh point clears it."""
    conn = db.connect(home.db_path)
    p = parse_text("name: often\nschedule: {every_minutes: 5}\n")[0]
    save_policy(conn, p, to_yaml(p))
    u = register(conn, "web1")
    bind(conn, u, "web1", "often")
    now = datetime.now(UTC)
    conn.execute("UPDATE protections SET since = ?", ((now - timedelta(hours=1)).isoformat(),))
    point(home, tmp_path, u, "web1", now - timedelta(minutes=40), "FILE_SYSTEM")
    row = build(home, now=now).rows[0]
    assert len(row.attention) == 1 and row.attention[0].startswith("overdue: newest point is older"), row.attention
    point(home, tmp_path, u, "web1", now - timedelta(minutes=1), "FILE_SYSTEM")
    assert build(home, now=now).rows[0].attention == []


def test_cli_json_and_table(home: settings.Settings, tmp_path: Path) -> None:
    """`vmbackup dashboard --json` prints the documented shape; without --json a table with the VM."""
    conn = db.connect(home.db_path)
    u = register(conn, "web1")
    point(home, tmp_path, u, "web1", datetime.now(UTC) - timedelta(minutes=5), "CRASH")
    cmd = [sys.executable, "-m", "controller.cli.main", "dashboard"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout)
    assert set(d) == {"generated_at", "vms", "jobs_24h", "vault", "rows", "attention"}
    assert d["rows"][0]["vm_name"] == "web1" and d["rows"][0]["last_point"]["consistency"] == "CRASH"
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "VMBACKUP_HOME": str(home.home)}
    txt = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert "web1" in txt and "CRASH" in txt and "registered" in txt


def test_row_json_lists_every_field_but_the_remediation() -> None:
    """VmRow.to_dict spells its keys out (for speed): a field added later must appear in it too."""
    import dataclasses

    from controller.dashboard.model import VmRow

    row = VmRow("3fa9c1d2-0000-4000-8000-000000000001", "web1", attention=["overdue"], remediation=["back up"])
    fields = {f.name for f in dataclasses.fields(VmRow)}
    assert set(row.to_dict()) == fields - {"remediation"}
    assert row.to_dict()["attention"] == ["overdue"]
