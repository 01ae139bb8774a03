"""Job store: persistence across restarts and processes, filters, the per-VM lock, orphans, phases, cancel."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from controller import db
from controller.errors import VmBackupError
from controller.jobs.exceptions import (
    DiscoveryInProgress,
    JobCancelled,
    JobNotFound,
    JobStateError,
    OperationInProgress,
)
from controller.jobs.model import parse_duration
from controller.jobs.store import JobStore, VmRef
from controller.virt.exceptions import DomainBusy, HypervisorError

VM_A = VmRef("aaaaaaaa-0000-4000-8000-000000000001", "alpha", "qemu:///system")
VM_B = VmRef("bbbbbbbb-0000-4000-8000-000000000002", "beta", "qemu:///system")


@pytest.fixture
def dbpath(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(dbpath: Path) -> JobStore:
    return JobStore.open(dbpath)


def test_completed_job_records_phases_bytes_details(store: JobStore) -> None:
    job = store.create("backup", vm=VM_A)
    assert job.state == "queued" and store.lock_holder(VM_A.uuid) == job.id
    with store.run(job.id) as run:
        assert store.get(job.id).state == "in-progress"
        with run.phase("freeze"):
            time.sleep(0.05)
        with run.phase("copy"):
            run.add_bytes(1000)
            run.add_bytes(24)
        run.add_bytes(5)  # outside a phase: total only
        run.detail("consistency", "FILE_SYSTEM")
        run.warn("first")
        run.warn("second")
    got = store.get(job.id)
    assert got.state == "completed" and got.error is None
    assert got.bytes_total == 1029
    assert [(p.name, p.state, p.bytes) for p in got.phases] == [
        ("freeze", "completed", None),
        ("copy", "completed", 1024),
    ]
    assert got.phases[0].duration_s is not None and got.phases[0].duration_s >= 0.05
    assert got.details == {"consistency": "FILE_SYSTEM", "warnings": ["first", "second"]}
    assert got.started_at and got.ended_at and got.created_at <= got.started_at <= got.ended_at
    assert store.lock_holder(VM_A.uuid) is None  # released


def test_failed_job_records_typed_error_and_releases_lock(store: JobStore) -> None:
    job = store.create("backup", vm=VM_A)
    with pytest.raises(HypervisorError) as ei, store.run(job.id) as run, run.phase("snapshot"):
        raise HypervisorError("snapshot refused", remediation="free some space")
    assert "job_id" not in ei.value.details  # the caller's error is re-raised untouched
    got = store.get(job.id)
    assert got.state == "failed"
    assert got.error == {
        "code": "HYPERVISOR_ERROR",
        "message": "snapshot refused",
        "remediation": "free some space",
    }
    assert got.phases[0].state == "failed"
    assert store.lock_holder(VM_A.uuid) is None
    store.create("backup", vm=VM_A)  # the VM is free again


def test_unexpected_exception_is_internal_error(store: JobStore) -> None:
    job = store.create("verify", vm=VM_A)
    with pytest.raises(ZeroDivisionError), store.run(job.id):
        _ = 1 / 0
    err = store.get(job.id).error
    assert err is not None and err["code"] == "INTERNAL_ERROR" and "ZeroDivisionError" in err["message"]


def test_restart_survival_close_and_reopen(dbpath: Path) -> None:
    s1 = JobStore.open(dbpath)
    done = s1.create("backup", vm=VM_A)
    with s1.run(done.id) as run, run.phase("copy"):
        run.add_bytes(42)
    queued = s1.create("restore", vm=VM_B)
    s1.conn.close()
    s2 = JobStore.open(dbpath)
    assert s2.get(done.id).bytes_total == 42 and s2.get(done.id).phases[0].name == "copy"
    assert s2.get(queued.id).state == "queued"
    with pytest.raises(OperationInProgress):  # this process still owns the queued job: lock held
        s2.create("backup", vm=VM_B)


def test_another_process_sees_and_runs_jobs(dbpath: Path) -> None:
    job = JobStore.open(dbpath).create("verify", vm=VM_A)
    code = (
        "import sys; from pathlib import Path; from controller.jobs.store import JobStore\n"
        "s = JobStore.open(Path(sys.argv[1]))\n"
        "assert s.get(sys.argv[2]).state == 'queued'\n"
        "with s.run(sys.argv[2]) as r: r.add_bytes(7)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(dbpath), job.id], check=True, timeout=60)
    got = JobStore.open(dbpath).get(job.id)
    assert got.state == "completed" and got.bytes_total == 7 and got.owner_pid != os.getpid()


def test_filters(store: JobStore) -> None:
    a = store.create("backup", vm=VM_A)
    with store.run(a.id):
        pass
    b = store.create("backup", vm=VM_B)
    with pytest.raises(HypervisorError), store.run(b.id):
        raise HypervisorError("x")
    d = store.create("discover", host_uri="qemu:///system", lock_key="discover:qemu:///system")
    old = store.create("verify", vm=VM_A)
    store.conn.execute("UPDATE jobs SET created_at = '2000-01-01T00:00:00+00:00' WHERE id = ?", (old.id,))

    ids = lambda jobs: {j.id for j in jobs}  # noqa: E731
    assert ids(store.list(type="backup")) == {a.id, b.id}
    assert ids(store.list(state="failed")) == {b.id}
    assert ids(store.list(vm="alpha")) == {a.id, old.id}
    assert ids(store.list(vm=VM_B.uuid)) == {b.id}
    assert ids(store.list(since=timedelta(hours=1))) == {a.id, b.id, d.id}
    assert d.vm is None and store.get(d.id).host_uri == "qemu:///system"
    newest = store.list(limit=2)
    assert len(newest) == 2 and newest[0].created_at >= newest[1].created_at
    assert store.list()[-1].id == old.id  # newest first
    with pytest.raises(JobStateError):
        store.list(state="bogus")


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_threads_race_for_one_vm_exactly_one_wins(dbpath: Path, shared: bool) -> None:
    JobStore.open(dbpath)  # create the schema once
    common = JobStore.open(dbpath) if shared else None
    n, barrier = 12, threading.Barrier(12)
    wins: list[str] = []
    refusals: list[BaseException] = []

    def worker() -> None:
        s = common or JobStore.open(dbpath)
        barrier.wait()
        try:
            wins.append(s.create("backup", vm=VM_A).id)
        except OperationInProgress as e:
            refusals.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wins) == 1 and len(refusals) == n - 1
    assert all(isinstance(e, DomainBusy) and e.code == "OPERATION_IN_PROGRESS" for e in refusals)
    assert JobStore.open(dbpath).lock_holder(VM_A.uuid) == wins[0]


def _race(path: str, start: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Child process: wait for the common start time, try to create a job, report, keep the lock a moment."""
    s = JobStore.open(Path(path))
    time.sleep(max(0.0, start - time.time()))
    try:
        job = s.create("backup", vm=VM_A)
        out.put(("won", job.id))
        time.sleep(1.0)  # stay alive so the lock is not stale while the others try
    except OperationInProgress:
        out.put(("refused", ""))


def test_processes_race_for_one_vm_exactly_one_wins(dbpath: Path) -> None:
    JobStore.open(dbpath)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 3.0
    procs = [ctx.Process(target=_race, args=(str(dbpath), start, q)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(r[0] for r in results).count("won") == 1, results
    assert [r[0] for r in results].count("refused") == 5


def test_orphan_recovery_with_dead_owner(dbpath: Path, store: JobStore) -> None:
    # a real process creates and starts a job, then dies without finishing it
    code = (
        "import os, sys; from pathlib import Path; from controller.jobs.store import JobStore, VmRef\n"
        "s = JobStore.open(Path(sys.argv[1]))\n"
        f"j = s.create('backup', vm=VmRef({VM_A.uuid!r}, 'alpha', 'qemu:///system'))\n"
        "r = s.start(j.id)\n"
        "cm = r.phase('copy'); cm.__enter__()\n"
        "print(j.id, flush=True); os._exit(9)\n"
    )
    cp = subprocess.run([sys.executable, "-c", code, str(dbpath)], capture_output=True, text=True, timeout=60)
    dead_id = cp.stdout.strip()
    mine = store.create("backup", vm=VM_B)  # owned by this live process: must be left alone
    assert store.get(dead_id).state == "in-progress" and not store.is_owner_alive(dead_id)
    assert store.is_owner_alive(mine.id)

    recovered = store.recover_orphans()
    assert [j.id for j in recovered] == [dead_id]
    got = store.get(dead_id)
    assert got.state == "failed" and got.error and got.error["code"] == "CONTROLLER_RESTARTED"
    assert got.phases[0].state == "failed" and got.ended_at
    assert store.lock_holder(VM_A.uuid) is None and store.lock_holder(VM_B.uuid) == mine.id
    assert store.get(mine.id).state == "queued"
    assert store.recover_orphans() == []


def test_stale_lock_of_dead_owner_is_taken_over(dbpath: Path, store: JobStore) -> None:
    job = store.create("backup", vm=VM_A)
    # pretend the owner was another process that is gone (pid 1's marker does not match: a reused pid)
    store.conn.execute("UPDATE jobs SET owner_pid = 1, owner_start = 'x:1' WHERE id = ?", (job.id,))
    again = store.create("backup", vm=VM_A)
    assert store.lock_holder(VM_A.uuid) == again.id
    assert store.get(job.id).error["code"] == "CONTROLLER_RESTARTED"  # type: ignore[index]


def test_cancel_queued_job_at_once(store: JobStore) -> None:
    job = store.create("backup", vm=VM_A)
    assert store.request_cancel(job.id) == "cancelled"
    got = store.get(job.id)
    assert got.state == "cancelled" and got.cancel_requested and got.error["code"] == "JOB_CANCELLED"  # type: ignore[index]
    assert store.lock_holder(VM_A.uuid) is None
    with pytest.raises(JobCancelled):
        store.start(job.id)  # a worker picking it up later must not run it
    with pytest.raises(JobStateError):
        store.request_cancel(job.id)


def test_cancel_running_job_stops_at_next_check(store: JobStore) -> None:
    job = store.create("backup", vm=VM_A)
    reached = []
    with pytest.raises(JobCancelled), store.run(job.id) as run:
        with run.phase("copy"):
            run.check_cancelled()  # nothing requested yet
            assert JobStore(db.connect(store_path(store))).request_cancel(job.id) == "requested"
            reached.append("before-check")
            run.check_cancelled()
        reached.append("after-check")
    assert reached == ["before-check"]
    got = store.get(job.id)
    assert got.state == "cancelled" and got.phases[0].state == "cancelled"
    assert store.lock_holder(VM_A.uuid) is None


def store_path(store: JobStore) -> Path:
    """The file behind a store's connection."""
    return Path(store.conn.execute("PRAGMA database_list").fetchone()["file"])


def test_discovery_lock_is_per_host(store: JobStore) -> None:
    uri = "qemu:///system"
    store.create("discover", host_uri=uri, lock_key=f"discover:{uri}")
    with pytest.raises(DiscoveryInProgress) as ei:
        store.create("discover", host_uri=uri, lock_key=f"discover:{uri}")
    assert "another discovery is already running" in ei.value.message
    store.create("discover", host_uri="qemu:///session", lock_key="discover:qemu:///session")


def test_unknown_ids_and_types(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("nope")
    with pytest.raises(JobNotFound):
        store.request_cancel("nope")
    with pytest.raises(VmBackupError):
        store.create("bogus", vm=VM_A)


def test_parse_duration() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("30m") == timedelta(minutes=30)
    with pytest.raises(VmBackupError) as ei:
        parse_duration("yesterday")
    assert ei.value.code == "INVALID_ARGUMENT"
