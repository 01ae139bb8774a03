"""The serve loop without VMs: missed-run rule, DB anchoring, bounds, CLI-lock collisions, graceful stop.

The backup runner is replaced through ``Runners`` (a seam for unit tests; tests/serve/test_serve_vm.py runs the
real engine). Fake runners still create real job records in the same SQLite state where it matters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller import settings as settings_mod
from controller.jobs.store import JobStore, VmRef
from controller.scheduling.exceptions import ServeAlreadyRunning
from controller.scheduling.serve import Runners, ServeOptions, Server
from controller.scheduling.workers import Pacer, RunResult, Task

EVERY_MIN = "name: every1\nschedule: {every_minutes: 1}\n"
T0 = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Recorder:
    """A fake backup runner: records calls, tracks peak concurrency, optionally blocks until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[Task] = []
        self.active: list[Task] = []
        self.peak = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()

    def __call__(self, settings: settings_mod.Settings, task: Task) -> RunResult:
        with self._lock:
            self.calls.append(task)
            self.active.append(task)
            self.peak = max(self.peak, len(self.active))
        self.release.wait(10)
        with self._lock:
            self.active.remove(task)
        return None, f"point-{len(self.calls)}", "fake"


def settle(server: Server) -> None:
    """Wait for the pool to drain, then collect outcomes."""
    assert server.pool.wait(10)
    server.tick(plan_new=False)


def make_server(cfg: settings_mod.Settings, runner: Any, clock: Callable[[], datetime], **opts: Any) -> Server:
    """A server with fake backups and housekeeping switched off."""
    o = ServeOptions(prune_every=timedelta(0), verify_every=timedelta(0), **opts)
    return Server(cfg, o, Runners(backup=runner), clock=clock)


def test_missed_slots_run_once_then_follow_schedule(private_settings: Any, policy: Any, protect: Any) -> None:
    """Protected 10 h ago, serve was down: one run at start (600 slots coalesced), then one per slot."""
    policy(EVERY_MIN)
    reg = protect("web1", "every1", since=T0 - timedelta(hours=10))
    clock, rec = Clock(T0), Recorder()
    server = make_server(private_settings, rec, clock)
    due = server.due_tasks(T0)
    assert [(t.key, t.missed) for t in due] == [(reg.vm_uuid, 599)]
    server.tick()
    settle(server)
    assert len(rec.calls) == 1
    clock.now = T0 + timedelta(seconds=20)  # same minute: nothing due
    server.tick()
    settle(server)
    assert len(rec.calls) == 1
    clock.now = T0 + timedelta(seconds=31)  # 10:01:01: the 10:01 slot
    server.tick()
    settle(server)
    assert len(rec.calls) == 2 and rec.calls[1].slot == datetime(2026, 3, 2, 10, 1, tzinfo=UTC)
    assert server.stats.outcomes[-1].state == "completed"


def test_last_backup_job_in_db_anchors_schedule(private_settings: Any, conn: Any, policy: Any, protect: Any) -> None:
    """A backup job recorded by another process (e.g. the CLI) counts as the VM's last run."""
    policy("name: hourly\nschedule: {hourly: 1}\n")
    now = datetime.now(UTC)
    reg = protect("db1", "hourly", since=now - timedelta(hours=5))
    server = make_server(private_settings, Recorder(), Clock(now))
    assert len(server.due_tasks(now)) == 1
    jobs = JobStore(conn)
    job = jobs.create("backup", vm=VmRef(reg.vm_uuid, "db1", "qemu:///system"))
    with jobs.run(job.id):
        pass
    assert server.due_tasks(datetime.now(UTC)) == []


def test_bounds_overall_per_host_per_policy(private_settings: Any, policy: Any, protect: Any) -> None:
    """Six due VMs on two hosts: never more than max_jobs overall, max_per_host per host, or the policy limit."""
    policy(EVERY_MIN)
    policy("name: capped\nschedule: {every_minutes: 1}\nlimits: {max_concurrent_jobs: 1}\n")
    since = T0 - timedelta(hours=1)
    for i in range(4):
        protect(f"a{i}", "every1", since, host="qemu+ssh://127.0.0.1/a" if i % 2 else "qemu:///system")
    protect("c1", "capped", since, host="test:///c")
    protect("c2", "capped", since, host="test:///d")
    rec = Recorder(hold=True)
    server = make_server(private_settings, rec, Clock(T0), max_jobs=3, max_per_host=1)
    server.tick()
    time.sleep(0.3)
    hosts = [t.host_uri for t in rec.active]
    assert len(rec.active) == 3 and len(set(hosts)) == 3, hosts
    assert sum(1 for t in rec.active if t.policy and t.policy.name == "capped") <= 1
    for _ in range(6):
        server.tick()
        time.sleep(0.1)
        assert len(rec.active) <= 3
        assert sum(1 for t in rec.active if t.policy and t.policy.name == "capped") <= 1
    rec.release.set()
    for _ in range(20):  # drain: every VM gets its run once bounds free up
        server.tick()
        if len(rec.calls) == 6 and server.pool.busy() == 0:
            break
        time.sleep(0.1)
    assert sorted(t.vm_name for t in rec.calls) == ["a0", "a1", "a2", "a3", "c1", "c2"]
    assert rec.peak <= 3


def test_vm_locked_by_cli_job_is_skipped_then_retried(
    private_settings: Any, conn: Any, policy: Any, protect: Any
) -> None:
    """A live job of another process holds the VM lock: skipped (no failure, no job), run on a later tick."""
    policy(EVERY_MIN)
    reg = protect("web1", "every1", since=T0 - timedelta(hours=1))
    other = JobStore(conn)  # stands for the CLI: same state DB, lock held by a live owner
    held = other.create("restore", vm=VmRef(reg.vm_uuid, "web1", "qemu:///system"))
    rec = Recorder()
    server = make_server(private_settings, rec, Clock(T0))
    server.tick()
    settle(server)
    assert rec.calls == [] and server.stats.skipped_busy == 1
    assert [j.type for j in JobStore(conn).list(vm=reg.vm_uuid)] == ["restore"]
    other.request_cancel(held.id)
    server.tick()
    settle(server)
    assert len(rec.calls) == 1


def test_stop_cancels_running_job_after_grace(private_settings: Any, policy: Any, protect: Any) -> None:
    """SIGTERM semantics: stop scheduling, grace period, then the running job is cancelled and ends cancelled."""
    policy(EVERY_MIN)
    reg = protect("web1", "every1", since=T0 - timedelta(hours=1))
    started = threading.Event()

    def slow_backup(settings: settings_mod.Settings, task: Task) -> RunResult:
        jobs = JobStore.open(settings.db_path)
        job = jobs.create("backup", vm=VmRef(task.key, task.vm_name, task.host_uri))
        with jobs.run(job.id) as run, run.phase("copy"):
            started.set()
            for _ in range(200):
                run.check_cancelled()
                time.sleep(0.05)
        return job.id, None, "not cancelled"

    server = make_server(private_settings, slow_backup, Clock(T0), grace_s=0.5, tick_s=0.2)
    th = threading.Thread(target=server.serve)
    th.start()
    assert started.wait(10)
    t0 = time.monotonic()
    server.request_stop()
    th.join(15)
    assert not th.is_alive()
    assert time.monotonic() - t0 < 5, "stop took too long: the cancel was not honoured"
    out = server.stats.outcomes[-1]
    assert out.state == "cancelled"
    job = JobStore.open(private_settings.db_path).list(vm=reg.vm_uuid)[0]
    assert job.state == "cancelled" and job.error and job.error["code"] == "JOB_CANCELLED"
    assert job.phases[0].state == "cancelled"


def test_one_serve_per_home(private_settings: Any) -> None:
    """A second serve against the same VMBACKUP_HOME refuses to start."""
    a = make_server(private_settings, Recorder(), Clock(T0))
    a.start()
    try:
        with pytest.raises(ServeAlreadyRunning):
            make_server(private_settings, Recorder(), Clock(T0)).start()
    finally:
        a.shutdown()
    b = make_server(private_settings, Recorder(), Clock(T0))  # released on shutdown
    b.start()
    b.shutdown()


def test_pacer_holds_rate_and_caps_pauses() -> None:
    """80 Mbit/s = 10 MB/s: 5 MB reported at once asks for 0.5 s; 50 MB is capped at 1 s per callback."""
    slept: list[float] = []
    p = Pacer(80, sleep=slept.append)
    p("vda", 0, 100)
    p("vda", 5_000_000, 100)
    assert slept and 0.4 < slept[0] <= 0.5
    p("vdb", 0, 100)
    p("vdb", 50_000_000, 100)
    assert slept[-1] == 1.0
