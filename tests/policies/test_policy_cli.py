"""CLI: `policy create/list/show/delete`, `protect`, `unprotect` through controller.cli.main.main."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from controller.cli.main import main
from controller.policies import store


def _json(capsys: Any, argv: list[str]) -> Any:
    """Run a command that must succeed and parse its JSON output."""
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_create_from_flags_list_show(conn: sqlite3.Connection, capsys: Any) -> None:
    """Flags go through the same validator; list and show report them."""
    rows = _json(capsys, ["policy", "create", "gold", "--daily", "22:00", "--timezone", "Europe/Berlin",
                          "--keep-last", "7", "--keep-monthly", "6", "--max-age", "180d",
                          "--consistency", "FILE_SYSTEM", "--json"])
    assert rows[0]["action"] == "created" and rows[0]["schedule"]["hour"] == 22
    listed = _json(capsys, ["policy", "list", "--json"])
    assert [(p["name"], p["retention"]["keep_monthly"], p["protected_vms"]) for p in listed] == [("gold", 6, 0)]
    shown = _json(capsys, ["policy", "show", "gold", "--json"])
    assert "daily: '22:00'" in shown["yaml"] and shown["vms"] == []
    assert store.get_policy(conn, "gold").policy.retention.max_age is not None


def test_create_flag_error_names_the_flag(capsys: Any) -> None:
    """A bad flag value is one clear error line naming the flag and what is allowed; exit 1."""
    assert main(["policy", "create", "gold", "--daily", "24:30"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error POLICY_INVALID: --daily: got '24:30'; allowed: a time HH:MM")
    assert main(["policy", "create", "gold", "--keep-last", "3"]) == 1
    assert "--daily/--weekly/--hourly/--every-minutes" in capsys.readouterr().err


def test_create_from_file_and_duplicate(tmp_path: Path, capsys: Any) -> None:
    """--file imports several policies; creating an existing name again is POLICY_EXISTS unless --replace."""
    f = tmp_path / "p.yaml"
    f.write_text("name: a\nschedule: {hourly: 6}\n---\nname: b\nschedule: {weekly: {days: [sun], at: '03:00'}}\n")
    assert [r["name"] for r in _json(capsys, ["policy", "create", "--file", str(f), "--json"])] == ["a", "b"]
    assert main(["policy", "create", "--file", str(f)]) == 1
    assert "POLICY_EXISTS" in capsys.readouterr().err
    assert [r["action"] for r in _json(capsys, ["policy", "create", "-f", str(f), "--replace", "--json"])] == [
        "replaced", "replaced"]


def test_bad_file_error_line(tmp_path: Path, capsys: Any) -> None:
    """The CLI prints file:line and field of a bad policy file."""
    f = tmp_path / "bad.yaml"
    f.write_text("name: a\nschedule:\n  weekly: {days: [mon], at: '7am'}\n")
    assert main(["policy", "create", "--file", str(f)]) == 1
    assert f"{f}:3: field 'schedule.weekly.at': got '7am'" in capsys.readouterr().err


def test_protect_unprotect_cli(conn: sqlite3.Connection, register: Any, capsys: Any) -> None:
    """protect (bulk), rebind shown, list status, delete refused while in use, unprotect needs --yes to delete."""
    register("web1")
    register("db1")
    main(["policy", "create", "gold", "--daily", "01:00"])
    main(["policy", "create", "silver", "--every-minutes", "30"])
    capsys.readouterr()
    outs = _json(capsys, ["protect", "web1", "db1", "--policy", "gold", "--json"])
    assert [o["status"] for o in outs] == ["Protected (initial backup pending)"] * 2
    assert main(["protect", "web1", "--policy", "silver"]) == 0
    assert "rebound from gold" in capsys.readouterr().out
    assert main(["protect", "ghost", "--policy", "gold"]) == 1
    assert "PROTECT_REQUIRES_REGISTRATION" in capsys.readouterr().err
    assert main(["policy", "delete", "gold"]) == 1
    assert "error POLICY_IN_USE: policy 'gold' protects 1 VM(s): db1" in capsys.readouterr().err
    assert main(["unprotect", "db1", "--delete-data"]) == 1  # stdin is not a terminal: no confirmation
    assert "CONFIRMATION_REQUIRED" in capsys.readouterr().err
    out = _json(capsys, ["unprotect", "db1", "--retain-data", "--json"])
    assert out["mode"] == "retain"
    listed = {r["vm_name"]: r for r in _json(capsys, ["protect", "--list", "--json"])}
    assert listed["db1"]["status"] == "Unprotected (data retained)" and listed["web1"]["policy"] == "silver"
    assert main(["policy", "delete", "gold"]) == 0
    assert capsys.readouterr().out == "deleted policy gold\n"
    out = _json(capsys, ["unprotect", "db1", "--delete-data", "--yes", "--json"])
    assert out["mode"] == "delete" and store.get_protection(conn, out["vm_uuid"]) is None
