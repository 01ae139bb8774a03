"""Running scheduled work on a bounded thread pool: overall, per-host and per-policy limits.

A :class:`Task` is one unit of work (a scheduled backup, a prune pass, a vault verify, a boot-check). The pool
admits a task only if every bound allows it; otherwise :meth:`WorkerPool.admit` says why and the scheduler tries
again on a later tick (nothing is queued in memory, so a restart loses nothing). Usage::

    pool = WorkerPool(max_jobs=2, max_per_host=1)
    why = pool.admit(task)                      # None if it may start now, else the reason
    if why is None:
        pool.submit(task, lambda: run_backup(settings, task))
    for done in pool.reap():                    # finished tasks, with their outcome
        ...

The default backup runner, :func:`run_backup`, gives every backup its own
:class:`~controller.backup.engine.BackupEngine` (and so its own SQLite connection): no connection is shared
between threads. It honours the policy's ``bandwidth_mbps`` approximately through the engine's progress hook
(see :class:`Pacer`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.errors import VmBackupError
from controller.jobs.exceptions import JobCancelled, OperationInProgress
from controller.policies.model import Policy
from controller.settings import Settings
from controller.vault import compress

#: Longest pause the pacer takes in one progress callback, so a cancel is still noticed promptly.
MAX_PAUSE_S = 1.0


@dataclass(frozen=True)
class Task:
    """One unit of scheduled work; kind is backup | prune | verify | boot-check."""

    kind: str
    key: str  # what must not run twice at once: the VM uuid, or e.g. 'verify'
    vm_name: str = ""
    host_uri: str = ""
    policy: Policy | None = None
    slot: datetime | None = None
    missed: int = 0
    point_id: str | None = None

    def label(self) -> str:
        """A short text for log lines, e.g. 'backup web1 (gold)'."""
        pol = f" ({self.policy.name})" if self.policy else ""
        return f"{self.kind} {self.vm_name or self.key}{pol}"


@dataclass
class Outcome:
    """How a task ended: completed | failed | cancelled | busy (lock held elsewhere: retried, not a failure)."""

    task: Task
    state: str
    job_id: str | None = None
    point_id: str | None = None
    detail: str = ""
    error: dict[str, Any] | None = None
    duration_s: float = 0.0


#: What a runner returns on success: (job id, point id or None, a short detail text)
RunResult = tuple[str | None, str | None, str]
Runner = Callable[[], RunResult]


def execute(task: Task, runner: Runner) -> Outcome:
    """Run one task, turning its typed errors into an Outcome (busy and cancelled are not failures)."""
    t0 = time.monotonic()
    try:
        job_id, point_id, detail = runner()
        out = Outcome(task, "completed", job_id, point_id, detail)
    except OperationInProgress as e:
        out = Outcome(task, "busy", e.details.get("holder_job_id"), detail=e.message)
    except JobCancelled as e:
        out = Outcome(task, "cancelled", e.details.get("job_id"), detail=e.message, error=e.to_dict())
    except VmBackupError as e:
        out = Outcome(task, "failed", e.details.get("job_id"), detail=str(e), error=e.to_dict())
    except Exception as e:  # a bug in a worker must not kill the serve loop; it is logged with its type
        err = VmBackupError(f"{type(e).__name__}: {e}")
        out = Outcome(task, "failed", None, detail=str(err), error=err.to_dict())
    out.duration_s = round(time.monotonic() - t0, 3)
    return out


@dataclass
class WorkerPool:
    """A thread pool that admits a task only within the overall, per-host and per-policy bounds."""

    max_jobs: int = 2
    max_per_host: int = 1
    running: dict[str, tuple[Task, Future[Outcome]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max(1, self.max_jobs), thread_name_prefix="vmb-worker")
        self._lock = threading.Lock()

    def admit(self, task: Task) -> str | None:
        """None if the task may start now, else why not (already running, or which bound is reached)."""
        with self._lock:
            tasks = [t for t, _ in self.running.values()]
        if task.key in self.running:
            return "already running"
        if len(tasks) >= self.max_jobs:
            return f"overall limit {self.max_jobs} reached"
        if task.host_uri and sum(1 for t in tasks if t.host_uri == task.host_uri) >= self.max_per_host:
            return f"per-host limit {self.max_per_host} reached on {task.host_uri}"
        limit = task.policy.max_concurrent_jobs if task.policy else None
        if limit and task.policy and sum(1 for t in tasks if t.policy and t.policy.name == task.policy.name) >= limit:
            return f"policy {task.policy.name} limit {limit} reached"
        return None

    def submit(self, task: Task, runner: Runner) -> None:
        """Start a task on a worker thread (call admit first)."""
        fut = self._executor.submit(execute, task, runner)
        with self._lock:
            self.running[task.key] = (task, fut)

    def reap(self) -> list[Outcome]:
        """The outcomes of tasks that finished since the last call."""
        with self._lock:
            done = [k for k, (_, f) in self.running.items() if f.done()]
            futs = [self.running.pop(k)[1] for k in done]
        return [f.result() for f in futs]

    def busy(self) -> int:
        """How many tasks are running."""
        with self._lock:
            return len(self.running)

    def wait(self, timeout_s: float | None) -> bool:
        """Wait until every running task has ended (or timeout); True if none is left running."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                futs = [f for _, f in self.running.values()]
            if all(f.done() for f in futs):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def close(self) -> None:
        """Stop the threads (after wait)."""
        self._executor.shutdown(wait=True)


class Pacer:
    """An engine progress hook that keeps the copy at about `mbps` megabits per second.

    Approximate by construction: the engine reports logical progress (holes of a sparse disk count, and
    ``qemu-img convert`` reports whole percents), and each pause is capped at MAX_PAUSE_S so that the cancel
    check that follows every callback stays prompt. A real limiter belongs in the vault copy itself.
    """

    def __init__(self, mbps: float, sleep: Callable[[float], None] = time.sleep):
        self.bytes_per_s = mbps * 1e6 / 8
        self.sleep = sleep
        self._start: dict[str, float] = {}

    def __call__(self, target: str, done: int, total: int) -> None:
        """Pause long enough that `done` bytes of this disk took at least done / rate seconds."""
        now = time.monotonic()
        start = self._start.setdefault(target, now)
        ahead = done / self.bytes_per_s - (now - start)
        if ahead > 0:
            self.sleep(min(ahead, MAX_PAUSE_S))


def run_backup(settings: Settings, task: Task) -> RunResult:
    """The real scheduled backup: a fresh BackupEngine (own State, closed after) for this VM and policy."""
    from controller.backup.engine import BackupEngine, BackupRequest  # lazy: needs libvirt

    pol = task.policy
    pacer = Pacer(pol.bandwidth_mbps) if pol and pol.bandwidth_mbps else None
    req = BackupRequest(
        vm=task.key,
        host_uri=task.host_uri or None,
        policy=pol.name if pol else None,
        min_consistency=pol.min_consistency if pol else None,
        exclude_disks=pol.exclude_disks if pol else (),
        full_every=pol.full_every if pol else None,
        compression=pol.compression if pol else compress.DEFAULT,
    )
    with BackupEngine(settings, progress=pacer) as engine:
        r = engine.run(req)
    window = f"{r.freeze_window_ms:.0f} ms" if r.freeze_window_ms is not None else "-"
    return r.job_id, r.point_id, f"{r.point_type}, {r.consistency}, freeze {window}, {r.bytes_copied / 2**20:.1f} MiB"


def run_boot_check(settings: Settings, task: Task) -> RunResult:
    """Boot-check a fresh point with controller.restore.bootcheck."""
    from controller.restore.bootcheck import BootChecker  # lazy: needs libvirt

    assert task.point_id is not None
    with BootChecker(settings) as checker:  # its State (DB connection) is closed after every boot-check
        res = checker.run(task.point_id, host_uri=task.host_uri or None)
    return res.job_id, res.point_id, f"passed in {res.duration_s:.0f} s"
