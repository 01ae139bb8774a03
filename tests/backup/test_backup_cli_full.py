"""`vmbackup backup VM --full` and the chain fields of a backup's output (host-only: the engine is a stand-in)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from controller.backup.engine import BackupRequest, BackupResult
from controller.cli import backup_cmd, output
from controller.cli.main import main


def _result(req: BackupRequest) -> BackupResult:
    """What the stand-in engine returns: an incremental unless --full was asked."""
    base: dict[str, Any] = dict(
        job_id="j1", point_id="p2", vm_uuid="u1", vm_name=req.vm, consistency="crash", consistency_reason="",
        freeze_window_ms=None, bytes_copied=3 * 2**20, duration_s=0.5,
    )
    if req.full:
        return BackupResult(**base, point_type="full", full_reason="--full requested", changed_bytes=None)
    return BackupResult(**base, point_type="incremental", parent="p1", changed_bytes=5 * 2**20)


class FakeEngine:
    """Records the requests it is given; returns :func:`_result`."""

    requests: list[BackupRequest] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Accept the CLI's (state, progress=...)."""

    def __enter__(self) -> FakeEngine:
        """Context manager like the real engine."""
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        """Nothing to close."""

    def run(self, req: BackupRequest) -> BackupResult:
        """Record and answer."""
        FakeEngine.requests.append(req)
        return _result(req)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[BackupRequest]:
    """The CLI runs against a private state dir and the stand-in engine; the requests it made."""
    monkeypatch.setenv("VMBACKUP_HOME", str(tmp_path))
    monkeypatch.setattr(output.console, "width", 240)
    monkeypatch.setattr(backup_cmd, "BackupEngine", FakeEngine)
    FakeEngine.requests = []
    return FakeEngine.requests


def test_full_flag_sets_request_full(fake: list[BackupRequest], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "web1", "--full"]) == 0
    assert main(["backup", "web1"]) == 0
    assert [r.full for r in fake] == [True, False]
    assert [r.vm for r in fake] == ["web1", "web1"]


def test_human_output_shows_type_parent_changed_and_reason(
    fake: list[BackupRequest], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "web1"]) == 0
    out = capsys.readouterr().out
    assert "incremental, parent p1, 5.0 MiB changed" in out
    assert "full because" not in out
    assert main(["backup", "web1", "--full"]) == 0
    out = capsys.readouterr().out
    assert "full, full because: --full requested" in out
    assert "parent" not in out


def test_json_output_has_chain_fields(fake: list[BackupRequest], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "web1", "--json"]) == 0
    inc = json.loads(capsys.readouterr().out)[0]
    assert (inc["point_type"], inc["parent"], inc["changed_bytes"], inc["full_reason"]) == (
        "incremental", "p1", 5 * 2**20, None,
    )
    assert main(["backup", "web1", "--full", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)[0]
    assert (full["point_type"], full["parent"], full["full_reason"]) == ("full", None, "--full requested")


def test_result_defaults_are_a_full() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(BackupResult)}
    assert fields["point_type"] == "full"
    assert fields["parent"] is None and fields["full_reason"] is None and fields["changed_bytes"] is None


def test_reason_with_brackets_prints_literally(
    fake: list[BackupRequest], capsys: pytest.CaptureFixture[str]
) -> None:
    r = _result(BackupRequest(vm="x", full=True))
    r.full_reason = "checkpoint [bold]vmb-1[/bold] missing"
    backup_cmd._print_result(r)
    assert "full because: checkpoint [bold]vmb-1[/bold] missing" in capsys.readouterr().out
