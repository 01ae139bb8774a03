"""`vmbackup serve`: the long-running controller that runs due backups, retention and vault verification.

Rules (tested in tests/serve/):

- **State is SQLite only.** Due runs are computed every tick from the ``protections`` and ``policies`` tables and
  the newest ``backup`` job of each VM (its creation time is the VM's last run, whatever started it: a CLI
  ``vmbackup backup`` counts; a run from before the protection began does not). Nothing is queued in memory,
  so a restart loses nothing.
- **Missed runs: once at start.** ``scheduling.plan`` coalesces every slot missed while serve was down into one
  run; the schedule then resumes from now.
- **Bounds.** At most ``max_jobs`` tasks overall, ``max_per_host`` per libvirt host and the policy's
  ``max_concurrent_jobs`` per policy. A task that does not fit waits for a later tick.
- **CLI collisions.** A VM whose operation lock is held by a live job of another process (e.g. a CLI backup) is
  skipped this tick and retried on the next one; that is not a failure and records no job. If the lock is taken
  between the check and the engine's own lock attempt, the engine's OPERATION_IN_PROGRESS is treated the same.
- **Failures** are recorded as failed jobs by the engine; the failed attempt anchors the schedule, so the VM is
  retried at its next slot, not on every tick. A VM that cannot even be looked up (no job) is retried after
  one schedule interval too (the attempt is remembered in memory).
- **Housekeeping.** After the backups of a tick, when no backup is running or due: a prune pass (retention of
  every protected VM) every ``prune_every`` (default 1 day) and one ``verify`` job of the whole vault every
  ``verify_every`` (default 1 day); the time of the newest such job comes from the jobs table. ``0s`` disables.
  The policy's ``boot_check_every: N`` boot-checks the point of every Nth completed backup of a VM.
- **Start.** ``backup.recovery.recover()`` (undo backups of a dead controller) and ``recover_orphans()``.
  One serve per VMBACKUP_HOME (a flock on ``$VMBACKUP_HOME/serve.lock``).
- **Alerts and metrics.** Under the lock, a notifier thread (controller/notify/) evaluates incidents every
  ``notify.every`` of config.yaml and sends their messages; with ``metrics`` (HOST:PORT) a Prometheus endpoint
  (controller/metrics/) serves metrics read from the DB and vault; with ``http`` (HOST:PORT) the read-only web
  dashboard (controller/web/, token required, loopback unless ``http_public``). All stop at shutdown.
- **Stop (SIGTERM/SIGINT).** No new task starts; running tasks get ``grace_s`` to finish; then every job this
  process owns is cancelled (a backup thaws, commits its overlays back and drops its partial point) and serve
  waits for them to end, then exits 0. A second signal skips the grace period.

Usage::

    server = Server(settings, ServeOptions(tick_s=5, max_jobs=2))
    sys.exit(server.serve())          # blocks until SIGTERM/SIGINT (or, with once=True, one pass)
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO

from controller import locks
from controller.errors import VmBackupError
from controller.jobs.store import JobStore
from controller.policies.exceptions import PolicyNotFound
from controller.policies.model import Policy
from controller.policies.store import PROTECTED, get_policy, list_protections
from controller.registration.store import get_registration
from controller.scheduling import housekeeping, workers
from controller.scheduling.exceptions import ServeAlreadyRunning
from controller.scheduling.schedule import Bound, next_run, plan
from controller.scheduling.workers import Outcome, RunResult, Task, WorkerPool
from controller.settings import Settings
from controller.state import State

log = logging.getLogger("vmbackup.serve")

#: A task runner as serve calls it: (settings, task) -> (job id, point id, detail text).
TaskRunner = Callable[[Settings, Task], RunResult]


@dataclass
class ServeOptions:
    """Knobs of the serve loop (see the CLI flags of `vmbackup serve`)."""

    tick_s: float = 5.0
    max_jobs: int = 2
    max_per_host: int = 1
    grace_s: float = 60.0
    prune_every: timedelta = timedelta(days=1)
    verify_every: timedelta = timedelta(days=1)
    once: bool = False
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint (controller/metrics/); None: none
    http: str | None = None  # HOST:PORT of the web dashboard (controller/web/); None: none
    http_public: bool = False  # allow a non-loopback --http address


@dataclass
class Runners:
    """What each kind of task runs; tests replace them (a seam, the real ones are the defaults)."""

    backup: TaskRunner = workers.run_backup
    boot_check: TaskRunner = workers.run_boot_check
    prune: Callable[[Settings, list[str]], RunResult] = housekeeping.prune_pass
    verify: Callable[[Settings], RunResult] = housekeeping.verify_vault


@dataclass
class Stats:
    """Counters of one serve process (for logs and tests)."""

    started: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_busy: int = 0


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


class Server:
    """The serve loop: plan, admit within bounds, run on workers, housekeeping, graceful stop."""

    def __init__(
        self,
        settings: Settings,
        options: ServeOptions | None = None,
        runners: Runners | None = None,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.settings = settings
        self.options = options or ServeOptions()
        self.runners = runners or Runners()
        self.clock = clock
        self.state = State(settings)  # the loop's (main thread); each task opens its own and closes it
        self.conn = self.state.db
        self.jobs = JobStore(self.conn)
        self.pool = WorkerPool(self.options.max_jobs, self.options.max_per_host)
        self.stats = Stats()
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._attempted: dict[str, datetime] = {}
        self._house_ran: dict[str, datetime] = {}
        self._followups: list[Task] = []
        self._said: dict[str, str] = {}
        self._lock_file: IO[str] | None = None
        self._closers: list[Callable[[], None]] = []  # notifier, metrics endpoint: stopped by shutdown
        self.metrics_url: str | None = None  # the Prometheus endpoint, once started
        self.web_url: str | None = None  # the web dashboard, once started

    # --- start and stop -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the serve lock, put back VMs of backups a dead controller left, fail orphaned jobs."""
        self._take_lock(self.settings.home / "serve.lock")
        self._start_side_services()
        try:
            from controller.backup.recovery import recover

            rep = recover(self.state)
            log.info(
                "start: recovery committed=%d overlays_removed=%d partials=%d orphaned_jobs=%d errors=%d",
                len(rep.committed), len(rep.removed_overlays), len(rep.removed_partials),
                len(rep.failed_jobs), len(rep.errors),
            )
            for e in rep.errors:
                log.error("start: recovery problem: %s", e)
        except VmBackupError as e:
            log.error("start: recovery failed (%s); continuing, `vmbackup recover` can retry it", e)
        for j in self.jobs.recover_orphans():
            log.info("start: job %s (%s) had no live owner: marked failed", j.id, j.type)
        o = self.options
        log.info(
            "start: pid %d, tick %.1fs, max_jobs %d, max_per_host %d, grace %.0fs, prune every %s, verify every %s",
            os.getpid(), o.tick_s, o.max_jobs, o.max_per_host, o.grace_s, o.prune_every or "off",
            o.verify_every or "off",
        )

    def _start_side_services(self) -> None:
        """Notifications (the notify section of config.yaml) and, if asked, the metrics endpoint; all or none."""
        from controller.notify.notifier import Notifier

        try:
            notifier = Notifier(self.settings)
            notifier.start()
            self._closers.append(notifier.stop)
            if self.options.metrics:
                from controller.metrics.server import start as start_metrics

                srv = start_metrics(self.settings, self.options.metrics)
                self._closers.append(srv.close)
                self.metrics_url = srv.url
                log.info("start: Prometheus metrics on %s", srv.url)
            if self.options.http:
                from controller.web.server import start as start_web

                web = start_web(self.settings, self.options.http, public=self.options.http_public)
                self._closers.append(web.close)
                self.web_url = web.url
                log.info("start: web dashboard on %s (the token: `vmbackup serve --show-token`)", web.url)
        except BaseException:
            self._stop_side_services()
            if self._lock_file is not None:  # serve does not start: let another one take the home
                self._lock_file.close()
                self._lock_file = None
            raise

    def _stop_side_services(self) -> None:
        """Stop what _start_side_services started, newest first."""
        while self._closers:
            self._closers.pop()()

    def _take_lock(self, path: Path) -> None:
        """flock the serve lock file (one serve per home) and write our pid into it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115  (held open for the life of the process)
        if not locks.acquire(f.fileno(), blocking=False):
            f.seek(0)
            other = f.read().strip() or "?"
            f.close()
            raise ServeAlreadyRunning(f"vmbackup serve already runs for {self.settings.home} (pid {other})")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """First call: stop scheduling and start the grace period; second call: cancel running jobs now."""
        if self._stop.is_set():
            self._hurry.set()
            return
        self._stop.set()

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop serve gracefully (main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def shutdown(self) -> None:
        """Let running tasks finish within the grace period, then cancel this process's jobs and wait."""
        n = self.pool.busy()
        if n:
            log.info("stop: %d task(s) running; waiting up to %.0fs before cancelling", n, self.options.grace_s)
        deadline = self.clock_mono() + self.options.grace_s
        while not self.pool.wait(0.5):
            if self._hurry.is_set() or self.clock_mono() >= deadline:
                self.cancel_own_jobs()
                self.pool.wait(None)
                break
        self._reap()
        self.pool.close()
        self._stop_side_services()
        self.state.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        log.info("stop: done (%d task(s) started)", self.stats.started)

    @staticmethod
    def clock_mono() -> float:
        """Monotonic seconds (grace periods do not follow the wall clock)."""
        return time.monotonic()

    def cancel_own_jobs(self) -> list[str]:
        """Request cancel of every queued or in-progress job this process owns; returns their ids."""
        mine = [j for j in self.jobs.list() if j.active and j.owner_pid == os.getpid()]
        for j in mine:
            try:
                how = self.jobs.request_cancel(j.id)
                log.info("stop: cancel %s job %s (%s): %s", j.type, j.id, j.vm.name if j.vm else "-", how)
            except VmBackupError as e:  # it ended meanwhile
                log.info("stop: job %s: %s", j.id, e)
        return [j.id for j in mine]

    # --- the loop -------------------------------------------------------------------------------------------

    def serve(self) -> int:
        """start, tick until stopped (or one pass with once), shutdown; returns the exit code (0)."""
        self.start()
        if threading.current_thread() is threading.main_thread():
            self.install_signals()
        try:
            self.tick()
            while not self._stop.is_set():
                if self.options.once and self.pool.busy() == 0 and not self._followups:
                    break
                self._stop.wait(min(self.options.tick_s, 1.0) if self.options.once else self.options.tick_s)
                self.tick(plan_new=not self.options.once)
        finally:
            self._stop.set()
            self.shutdown()
        return 0

    def tick(self, plan_new: bool = True) -> None:
        """One pass: collect finished tasks, then (unless stopping) start follow-ups, due backups, housekeeping."""
        self._reap()
        if self._stop.is_set():
            return
        now = self.clock()
        self._start_followups()
        if not plan_new:
            return
        waiting = self._start_backups(now)
        if not waiting and not any(t.kind == "backup" for t, _ in self.pool.running.values()):
            self._start_housekeeping(now)

    def _reap(self) -> None:
        """Log finished tasks; queue a boot-check after every Nth completed backup when the policy asks."""
        for out in self.pool.reap():
            self.stats.outcomes.append(out)
            t = out.task
            extra = f" job {out.job_id}" if out.job_id else ""
            extra += f" point {out.point_id}" if out.point_id else ""
            level = logging.ERROR if out.state == "failed" else logging.INFO
            log.log(level, "%s %s: %s%s (%.1fs)", out.state, t.label(), out.detail, extra, out.duration_s)
            if out.state == "completed" and t.kind == "backup" and out.point_id:
                self._maybe_boot_check(t, out.point_id)

    def _maybe_boot_check(self, t: Task, point_id: str) -> None:
        """Queue a boot-check of point_id if this was the policy's Nth completed backup of the VM."""
        every = t.policy.boot_check_every if t.policy else None
        if not every:
            return
        n = housekeeping.completed_backups(self.conn, t.key)
        if n % every == 0:
            log.info("boot-check due for %s: backup #%d, every %d", t.vm_name, n, every)
            self._followups.append(
                Task("boot-check", f"boot-check:{point_id}", t.vm_name, t.host_uri, t.policy, point_id=point_id)
            )

    def _start_followups(self) -> None:
        """Start queued boot-checks as bounds allow."""
        for t in list(self._followups):
            if self.pool.admit(t) is None:
                self._followups.remove(t)
                self._submit(t, functools.partial(self.runners.boot_check, self.settings, t))

    def due_tasks(self, now: datetime) -> list[Task]:
        """The backups due now: one per protected VM, however many slots were missed."""
        bounds: list[Bound] = []
        policies: dict[str, Policy] = {}
        for p in list_protections(self.conn, state=PROTECTED):
            try:
                pol = policies.get(p.policy) or get_policy(self.conn, p.policy).policy
            except PolicyNotFound:
                self._say(p.vm_uuid, f"skip {p.vm_name}: its policy {p.policy!r} no longer exists")
                continue
            policies[pol.name] = pol
            since = datetime.fromisoformat(p.since)
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            bounds.append(Bound(p.vm_uuid, p.vm_name, pol.name, pol.schedule, since))
        last = housekeeping.last_job_times(self.conn, "backup")
        for uuid, t in self._attempted.items():
            if uuid not in last or last[uuid] < t:
                last[uuid] = t
        for b in bounds:  # a run before the protection began (an earlier binding) does not anchor the new one
            if b.vm_uuid in last and last[b.vm_uuid] < b.since:
                del last[b.vm_uuid]
        tasks = []
        for r in plan(bounds, last, now):
            if r.due:
                reg = get_registration(self.conn, r.vm_uuid)
                host = reg.host_uri if reg else self.settings.uri
                tasks.append(Task("backup", r.vm_uuid, r.vm_name, host, policies[r.policy], r.at, r.missed))
        return tasks

    def _start_backups(self, now: datetime) -> bool:
        """Start the due backups the bounds allow; True if some due backup is still waiting."""
        waiting = False
        for t in self.due_tasks(now):
            if t.key in self.pool.running:
                continue
            holder = self.jobs.lock_holder(t.key)
            if holder and self.jobs.is_owner_alive(holder):
                self.stats.skipped_busy += 1
                self._say(t.key, f"skip {t.vm_name}: job {holder} holds its lock; retry next tick")
                waiting = True
                continue
            why = self.pool.admit(t)
            if why is not None:
                self._say(t.key, f"wait {t.label()}: {why}")
                waiting = True
                continue
            missed = f", {t.missed} more missed slot(s) coalesced" if t.missed else ""
            assert t.slot is not None
            log.info("start %s: slot %s%s", t.label(), t.slot.isoformat(timespec="seconds"), missed)
            self._attempted[t.key] = now
            self._said.pop(t.key, None)
            self._submit(t, functools.partial(self.runners.backup, self.settings, t))
        return waiting

    def _start_housekeeping(self, now: datetime) -> None:
        """Prune, then verify, when their interval since the newest such job has passed."""
        for kind, every in (("prune", self.options.prune_every), ("verify", self.options.verify_every)):
            if not every or not self._house_due(kind, every, now):
                continue
            t = Task(kind, "vault-maintenance")
            if self.pool.admit(t) is not None:
                return
            self._house_ran[kind] = now
            log.info("start %s", kind)
            if kind == "prune":
                uuids = [p.vm_uuid for p in list_protections(self.conn, state=PROTECTED)]
                self._submit(t, functools.partial(self.runners.prune, self.settings, uuids))
            else:
                self._submit(t, functools.partial(self.runners.verify, self.settings))
            return  # one maintenance task at a time: verify follows the prune on a later tick

    def _house_due(self, kind: str, every: timedelta, now: datetime) -> bool:
        """Whether the newest prune/verify (in the jobs table or started here) is older than every."""
        times = [t for t in (housekeeping.latest_job_time(self.conn, kind), self._house_ran.get(kind)) if t]
        return not times or max(times) + every <= now

    def _submit(self, t: Task, fn: Callable[[], RunResult]) -> None:
        """Hand a task to the pool and count it."""
        self.stats.started += 1
        self.pool.submit(t, fn)

    def _say(self, key: str, text: str) -> None:
        """Log a recurring condition once (until it changes)."""
        if self._said.get(key) != text:
            self._said[key] = text
            log.info("%s", text)


def next_slot(policy: Policy, last: datetime) -> datetime:
    """The policy's next slot after last (a convenience for callers such as the dashboard)."""
    return next_run(policy.schedule, last)


def configure_logging(level: int = logging.INFO) -> None:
    """One readable line per event on stderr: time, level, message."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s serve: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
