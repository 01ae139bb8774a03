"""The policy field full_every: parsed ("7" backups / "7d" days), validated, shown, passed to every backup path."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

import controller.backup.engine as engine
from controller.cli import output
from controller.cli.main import main
from controller.policies import protect
from controller.policies.exceptions import PolicyInvalid
from controller.policies.model import Policy, describe_full_every
from controller.policies.parse import parse_text, to_yaml
from controller.scheduling import workers

BASE = """\
name: db
schedule: {daily: "01:00"}
"""


@pytest.mark.parametrize(
    ("value", "stored", "text"),
    [
        ("7", "7", "full every 7 backups"),
        ("1", "1", "full every backup"),
        ("7d", "7d", "full every 7 days"),
        ('"14D"', "14d", "full every 14 days"),
        ("'30 d'", "30d", "full every 30 days"),
        ("007", "7", "full every 7 backups"),
    ],
)
def test_full_every_parsed_normalized_round_tripped(value: str, stored: str, text: str) -> None:
    (p,) = parse_text(BASE + f"full_every: {value}\n")
    assert p.full_every == stored
    assert p.describe_chain() == text
    (again,) = parse_text(to_yaml(p))
    assert again.full_every == stored
    assert Policy.from_dict(json.loads(json.dumps(p.to_dict()))).full_every == stored


def test_full_every_defaults_to_incremental_forever_and_old_json_reads() -> None:
    (p,) = parse_text(BASE)
    assert p.full_every is None and p.describe_chain() == "incremental forever"
    assert "full_every" not in to_yaml(p)
    d = p.to_dict()
    del d["full_every"]  # a policy stored before the field existed
    assert Policy.from_dict(d).full_every is None
    assert describe_full_every(None) == "incremental forever"


@pytest.mark.parametrize("value", ["0", "0d", "-3", "7w", "7h", "weekly", "1.5", "[7]", "''", "10001", "3651d"])
def test_bad_full_every_names_the_line_and_what_is_allowed(value: str) -> None:
    with pytest.raises(PolicyInvalid) as ei:
        parse_text(BASE + "consistency: CRASH\n" + f"full_every: {value}\n", source="p.yaml")
    msg = ei.value.message
    assert msg.startswith("p.yaml:4: field 'full_every': ") and ei.value.details["line"] == 4
    if value not in ("[7]", "''"):
        assert "allowed: a number of backups from 1 to 10000" in msg and "7d" in msg


def test_cli_flag_list_and_show(conn: sqlite3.Connection, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.console, "width", 240)
    assert main(["policy", "create", "gold", "--daily", "22:00", "--full-every", "7d"]) == 0
    assert "full every 7 days" in capsys.readouterr().out
    assert main(["policy", "create", "plain", "--daily", "23:00"]) == 0
    capsys.readouterr()
    assert main(["policy", "list", "--json"]) == 0
    listed = {p["name"]: p["full_every"] for p in json.loads(capsys.readouterr().out)}
    assert listed == {"gold": "7d", "plain": None}
    assert main(["policy", "list"]) == 0
    table = capsys.readouterr().out
    assert "full every 7 days" in table and "incremental forever" in table
    assert main(["policy", "show", "gold"]) == 0
    shown = capsys.readouterr().out
    assert "full_every: 7d" in shown and "# backups: full every 7 days" in shown
    assert main(["policy", "show", "gold", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["full_every"] == "7d"


def test_cli_bad_flag_names_the_flag(conn: sqlite3.Connection, capsys: Any) -> None:
    assert main(["policy", "create", "gold", "--daily", "22:00", "--full-every", "weekly"]) == 1
    assert capsys.readouterr().err.startswith("error POLICY_INVALID: --full-every: got 'weekly'; allowed:")


class _Engine:
    """Stands in for BackupEngine; records the requests."""

    seen: list[engine.BackupRequest] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept (settings, progress=...)."""

    def __enter__(self) -> _Engine:
        """Context manager like the real engine."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to close."""

    def run(self, req: engine.BackupRequest) -> engine.BackupResult:
        """Record the request; a made-up result."""
        _Engine.seen.append(req)
        return engine.BackupResult("j", "p1", "u", "db", "crash", "", None, 0, 0.1)


def test_backup_paths_pass_full_every(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "BackupEngine", _Engine)
    _Engine.seen = []
    (p,) = parse_text(BASE + "full_every: 5\n")
    (forever,) = parse_text(BASE)
    reg = type("Reg", (), {"vm_uuid": "u", "host_uri": "qemu:///system"})()
    assert protect.run_backup_now(None, reg, p) == "p1"  # type: ignore[arg-type]
    task = workers.Task("backup", "u", policy=p)
    assert workers.run_backup(None, task)[1] == "p1"  # type: ignore[arg-type]
    workers.run_backup(None, workers.Task("backup", "u", policy=forever))  # type: ignore[arg-type]
    workers.run_backup(None, workers.Task("backup", "u"))  # type: ignore[arg-type]
    assert [r.full_every for r in _Engine.seen] == ["5", "5", None, None]
    assert not any(r.full for r in _Engine.seen)
