"""What keeps `vmbackup dashboard` fast with 10,000 VMs, checked deterministically (no timing): the CLI imports
only the command it runs (no libvirt/grpc/paramiko for `dashboard`), the dashboard issues the same small number
of SQL statements whatever the number of VMs, and the slot cache answers exactly as next_run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.scale import SCHEDULES, populate
from controller import db, settings
from controller.cli.main import build_parser, command_modules
from controller.dashboard import build, queries
from controller.dashboard.queries import LAST_BACKUP_SQL
from controller.dashboard.slots import SlotCache
from controller.scheduling.schedule import next_run
from controller.state import State

HEAVY = ("libvirt", "grpc", "paramiko", "rich")


def test_dashboard_command_imports_no_libvirt_grpc_paramiko_rich(tmp_path: Path) -> None:
    """A fresh `vmbackup dashboard --json` process never imports the heavy modules (libvirt, grpc and paramiko
    cost ~1 s at start; rich a third of what is left)."""
    code = (
        "import sys, io, contextlib\n"
        "from controller.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['dashboard', '--json'])\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {"VMBACKUP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split(maxsplit=1) == ["0", "[]\n"], out.stdout + out.stderr


def test_each_command_is_found_in_its_own_module() -> None:
    """Every top-level command of the full parser is built, alone, from the module(s) that register it."""
    names = commands(build_parser())
    assert {"dashboard", "serve", "backup", "jobs", "job"} <= names
    for name in names:
        assert command_modules(name), name
        assert name in commands(build_parser(name))


def commands(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level command names of a parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_sql_statements_do_not_grow_with_vms(tmp_path: Path) -> None:
    """The dashboard of 30 VMs and of 300 VMs (protected, one backup job each) runs the same statements."""
    counts = []
    for n in (30, 300):
        home = tmp_path / f"n{n}"
        home.mkdir()
        populate(home / "state.db", n)
        st = State(dataclasses.replace(settings.load(), home=home, vault=home / "vault"))
        statements: list[str] = []
        st.db.set_trace_callback(statements.append)
        d = build(st)
        st.close()
        assert len(d.rows) == n and d.vms["protected"] == n
        assert all(r.last_backup is not None and r.next_run for r in d.rows)
        counts.append(len(statements))
    assert counts[0] == counts[1] < 20, counts


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe())
def test_slot_cache_equals_next_run(schedule: object) -> None:
    """For instants in any order (before, inside and past the cached range), the cache gives next_run's slot."""
    cache = SlotCache(schedule)  # type: ignore[arg-type]
    base = datetime(2026, 3, 20, 12, 7, tzinfo=UTC)  # spans the European DST change of 2026-03-29
    steps = [37, 5, 800, 1, 333, 2000, 90, 4000, 17, 1500, 3600, 12, 2999]
    for k, minutes in enumerate(steps * 3):
        t = base + timedelta(minutes=minutes * (k + 1) % 30000) - timedelta(days=2 * (k % 3 == 0))
        assert cache.next_after(t) == next_run(schedule, t), t  # type: ignore[arg-type]


def test_cli_json_is_one_line_when_piped(tmp_path: Path) -> None:
    """Piped, `dashboard --json` prints compact JSON (the indented encoder is 5x slower on 10,000 rows)."""
    populate(tmp_path / "state.db", 3)
    env = {"VMBACKUP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "controller.cli.main", "dashboard", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert out.count("\n") == 1 and len(json.loads(out)["rows"]) == 3
    assert db.connect(tmp_path / "state.db").execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3


def test_last_backup_is_the_newest_by_index(tmp_path: Path) -> None:
    """Of a VM's several backup jobs (and a newer job of another type) the newest backup is shown, found by one
    probe of the jobs_vm_type_created index (no sort of the VM's history)."""
    populate(tmp_path / "state.db", 2)
    conn = db.connect(tmp_path / "state.db")
    uuid, old_id = conn.execute("SELECT vm_uuid, id FROM jobs ORDER BY vm_uuid LIMIT 1").fetchone()
    for jid, typ, at in (("b-newest", "backup", "2099-01-01T00:00:00+00:00"), ("r-newer", "restore", "2099-02-01")):
        conn.execute(
            "INSERT INTO jobs (id, type, vm_uuid, vm_name, state, created_at) VALUES (?, ?, ?, 'x', 'completed', ?)",
            (jid, typ, uuid, at),
        )
    got = queries.last_backups(conn, [uuid, "no-such-vm"])
    assert list(got) == [uuid] and got[uuid]["job_id"] == "b-newest" and old_id != "b-newest"
    plan = " ".join(str(r["detail"]) for r in conn.execute("EXPLAIN QUERY PLAN " + LAST_BACKUP_SQL, ("[]",)))
    assert "jobs_vm_type_created" in plan and "TEMP B-TREE" not in plan, plan

