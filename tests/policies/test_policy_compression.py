"""The policy field compression (zstd | none, default zstd): parsed, validated, stored, passed to every backup path
(scheduled, protect's first backup, `vmbackup backup --compression`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import controller.backup.engine as engine
from controller.cli import backup_cmd
from controller.cli.main import main
from controller.policies import protect
from controller.policies.exceptions import PolicyInvalid
from controller.policies.model import Policy
from controller.policies.parse import parse_text, to_yaml
from controller.scheduling import workers
from controller.vault import compress

BASE = """\
name: db
schedule: {daily: "01:00"}
"""


@pytest.mark.parametrize(("value", "stored"), [("zstd", "zstd"), ("none", "none"), ("ZSTD", "zstd")])
def test_compression_parsed_and_round_tripped(value: str, stored: str) -> None:
    (p,) = parse_text(BASE + f"compression: {value}\n")
    assert p.compression == stored
    (again,) = parse_text(to_yaml(p))
    assert again.compression == stored
    assert Policy.from_dict(json.loads(json.dumps(p.to_dict()))).compression == stored


def test_compression_defaults_to_zstd_and_old_json_reads() -> None:
    (p,) = parse_text(BASE)
    assert p.compression == compress.DEFAULT == "zstd"
    assert "compression" not in to_yaml(p)
    d = p.to_dict()
    del d["compression"]  # a policy stored before the field existed
    assert Policy.from_dict(d).compression == "zstd"
    assert engine.BackupRequest(vm="x").compression == "zstd"  # a backup without a policy too


@pytest.mark.parametrize("value", ["lz4", "gzip", "yes", "[zstd]", "''"])
def test_bad_compression_names_the_line_and_what_is_allowed(value: str) -> None:
    with pytest.raises(PolicyInvalid) as ei:
        parse_text(BASE + f"compression: {value}\n", source="p.yaml")
    msg = ei.value.message
    assert msg.startswith("p.yaml:3: field 'compression': ") and ei.value.details["line"] == 3
    if value not in ("[zstd]", "''"):
        assert "allowed: none or zstd" in msg


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
        return engine.BackupResult("j", "p1", "u", "db", "CRASH", "", None, 0, 0.1)


def test_backup_paths_pass_compression(monkeypatch: pytest.MonkeyPatch, private_home: Any) -> None:
    monkeypatch.setattr(engine, "BackupEngine", _Engine)
    monkeypatch.setattr(backup_cmd, "BackupEngine", _Engine)
    _Engine.seen = []
    (off,) = parse_text(BASE + "compression: none\n")
    (default,) = parse_text(BASE)
    reg = type("Reg", (), {"vm_uuid": "u", "host_uri": "qemu:///system"})()
    assert protect.run_backup_now(None, reg, off) == "p1"  # type: ignore[arg-type]
    workers.run_backup(None, workers.Task("backup", "u", policy=off))  # type: ignore[arg-type]
    workers.run_backup(None, workers.Task("backup", "u", policy=default))  # type: ignore[arg-type]
    workers.run_backup(None, workers.Task("backup", "u"))  # type: ignore[arg-type]
    assert main(["backup", "vm1", "--compression", "none", "--json"]) == 0
    assert main(["backup", "vm1", "--json"]) == 0
    assert [r.compression for r in _Engine.seen] == ["none", "none", "zstd", "zstd", "none", "zstd"]
