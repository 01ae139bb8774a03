"""`vmbackup jobs`, `job show`, `job cancel` through controller.cli.main.main, on a private state database."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from controller import db
from controller.cli import output
from controller.cli.main import main
from controller.jobs.exceptions import JobCancelled
from controller.jobs.store import JobStore, VmRef
from controller.virt.exceptions import HypervisorError

VM = VmRef("cccccccc-0000-4000-8000-000000000003", "gamma", "qemu:///system")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    monkeypatch.setenv("VMBACKUP_HOME", str(tmp_path))
    monkeypatch.setattr(output.console, "width", 240)
    return JobStore(db.connect(tmp_path / "state.db"))


def test_jobs_list_and_filters(store: JobStore, capsys: pytest.CaptureFixture[str]) -> None:
    ok = store.create("backup", vm=VM)
    with store.run(ok.id) as run, run.phase("copy"):
        run.add_bytes(3 * 1024 * 1024)
    bad = store.create("backup", vm=VM)
    with pytest.raises(HypervisorError), store.run(bad.id):
        raise HypervisorError("no space", remediation="free space in the pool")
    old = store.create("verify", vm=VM)
    store.conn.execute("UPDATE jobs SET created_at = '2001-01-01T00:00:00+00:00' WHERE id = ?", (old.id,))

    def ids(*argv: str) -> list[str]:
        assert main(["jobs", *argv, "--json"]) == 0
        return [j["id"] for j in json.loads(capsys.readouterr().out)]

    assert ids() == [bad.id, ok.id, old.id]
    assert ids("--state", "failed") == [bad.id]
    assert ids("--type", "verify") == [old.id]
    assert ids("--vm", "gamma", "--since", "7d") == [bad.id, ok.id]
    assert ids("--vm", VM.uuid, "--limit", "1") == [bad.id]
    assert ids("--vm", "other") == []
    assert main(["jobs"]) == 0
    table = capsys.readouterr().out
    assert ok.id in table and "HYPERVISOR_ERROR" in table and "3.0 MiB" in table
    assert main(["jobs", "--since", "soon"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err

    assert main(["job", "show", bad.id]) == 0
    text = capsys.readouterr().out
    assert "error HYPERVISOR_ERROR: no space" in text and "fix: free space in the pool" in text
    assert main(["job", "show", ok.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["phases"][0]["name"] == "copy" and shown["phases"][0]["bytes"] == 3 * 1024 * 1024
    assert main(["job", "show", "20000101-000000-000000"]) == 1
    assert "error JOB_NOT_FOUND" in capsys.readouterr().err


def test_cancel_queued_and_running(store: JobStore, capsys: pytest.CaptureFixture[str]) -> None:
    queued = store.create("restore", vm=VM)
    assert main(["job", "cancel", queued.id]) == 0
    assert "cancelled now" in capsys.readouterr().out
    assert store.get(queued.id).state == "cancelled"

    job = store.create("backup", vm=VM)
    started, outcome = threading.Event(), []

    def worker() -> None:
        try:
            with store.run(job.id) as run, run.phase("copy"):
                started.set()
                for _ in range(600):  # a copy loop checking for cancel between chunks
                    run.add_bytes(1)
                    run.check_cancelled()
                    time.sleep(0.05)
            outcome.append("finished")
        except JobCancelled:
            outcome.append("cancelled")

    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(30)
    assert main(["job", "cancel", job.id]) == 0
    assert "cancel requested" in capsys.readouterr().out
    t.join(30)
    assert outcome == ["cancelled"]
    got = store.get(job.id)
    assert got.state == "cancelled" and got.error and got.error["code"] == "JOB_CANCELLED" and got.bytes_total < 600
    assert main(["job", "cancel", job.id]) == 1  # already ended
    assert "JOB_STATE_INVALID" in capsys.readouterr().err
