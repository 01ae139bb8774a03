"""`register`, `backup` and `restore` show their job's phases as they happen: a line on stderr at each phase's start
and end, none with --json (controller/cli/phases.py over controller.jobs.run.phase_events)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller import db, settings
from controller.cli import phases
from controller.cli.main import main
from controller.jobs.model import VmRef
from controller.jobs.store import JobStore
from controller.vault import RecoveryPoint
from tests.fixtures_state import _private_home, add_point  # noqa: F401  (fixtures)

UUID = "6a1b2c3d-0000-4000-8000-00000000b002"


def test_phase_lines_follow_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    """Each phase prints a start and an end line naming the VM and the job type, nested phases included; a failed
    phase says so; outside `shown` (or with enabled=False) nothing is printed."""
    store = JobStore(db.connect(settings.load().db_path))
    job = store.create("backup", VmRef(UUID, "web1", "qemu:///system"))
    with phases.shown():
        run = store.start(job.id)
        with run.phase("freeze"), run.phase("snapshot"):
            pass
        with pytest.raises(RuntimeError), run.phase("copy"):
            raise RuntimeError("disk gone")
    with phases.shown(enabled=False), run.phase("commit"):
        pass
    with run.phase("commit"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "web1 backup: freeze ..." and lines[1] == "web1 backup: snapshot ..."
    assert lines[2].startswith("web1 backup: snapshot completed in ") and lines[2].endswith(" s")
    assert lines[3].startswith("web1 backup: freeze completed in ")
    assert lines[4:6] == ["web1 backup: copy ...", lines[5]] and lines[5].startswith("web1 backup: copy failed in ")
    assert len(lines) == 6, lines


def test_listener_error_never_fails_the_job() -> None:
    """A display that raises (a closed terminal) leaves the phase and its job untouched."""
    from controller.jobs.run import phase_events

    def broken(*_: object) -> None:
        raise OSError("EPIPE")

    store = JobStore(db.connect(settings.load().db_path))
    run = store.start(store.create("backup", VmRef(UUID, "web1", "qemu:///system")).id)
    with phase_events(broken), run.phase("copy"):
        pass
    assert [p.state for p in store.get(run.job_id).phases] == ["completed"]


def test_restore_cli_shows_phases_not_in_json(
    add_point: Callable[..., RecoveryPoint],  # noqa: F811  (the fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`restore POINT --disks-only --to DIR` prints verify and copy as they run; with --json stderr has no phases
    and stdout is the JSON result alone."""
    p = add_point(UUID, "web1", datetime(2026, 11, 1, tzinfo=UTC))
    assert main(["restore", p.point_id, "--disks-only", "--to", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    for phase in ("verify", "copy"):
        assert f"web1 restore: {phase} ...\n" in err and f"web1 restore: {phase} completed in " in err, err
    assert err.index("restore: verify ...") < err.index("restore: copy ...")
    assert main(["restore", p.point_id, "--disks-only", "--to", str(tmp_path / "b"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "restore: " not in err and json.loads(out)["point_id"] == p.point_id
