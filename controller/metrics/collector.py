"""The Prometheus collector: every metric is read from the state DB and the vault at scrape time (cached briefly).

Nothing is counted in memory, so the numbers are the same whichever process made the jobs (CLI or serve) and
survive restarts. A scrape builds one snapshot (one pass over the vault's manifests, three aggregate SQL queries,
one statvfs) and reuses it for ``cache_s`` seconds (default 5), so a burst of scrapes costs one build.

Metrics (labels ``vm_uuid`` and ``vm``, the VM's name at its newest point):

=============================================  =========  ===================================================
vmbackup_last_success_timestamp_seconds        gauge      newest recovery point's creation time, per VM
vmbackup_last_point_consistency                gauge      newest point's consistency: 0 CRASH, 1 FILE_SYSTEM,
                                                          2 APPLICATION, per VM
vmbackup_last_point_guest_frozen_seconds       gauge      newest point's guest frozen time, per VM (if known)
vmbackup_points                                gauge      recovery points per VM
vmbackup_stored_bytes                          gauge      bytes the VM's points occupy in the vault, per VM
vmbackup_boot_check_passed                     gauge      1/0: the newest boot-checked point passed, per VM
vmbackup_boot_check_timestamp_seconds          gauge      when that boot-check ran, per VM
vmbackup_boot_checks                           gauge      points with a boot-check verdict, by result
vmbackup_guest_frozen_seconds                  histogram  guest frozen time (manifest guest_frozen_ms) of
                                                          every point that records it
vmbackup_jobs                                  gauge      jobs in the state DB by type and state
vmbackup_job_duration_seconds                  histogram  start-to-end time of finished jobs, by type and state
vmbackup_job_bytes_total                       counter    bytes copied by jobs, by type and state
vmbackup_vault_stored_bytes                    gauge      bytes of all points (manifests' stored_bytes)
vmbackup_vault_filesystem_size_bytes           gauge      size of the vault's filesystem
vmbackup_vault_filesystem_avail_bytes          gauge      bytes available to the vault on its filesystem
vmbackup_incidents_open                        gauge      open notification incidents, by kind
vmbackup_metrics_build_seconds                 gauge      time the last snapshot took to build
=============================================  =========  ===================================================
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.contract import consistency_rank
from controller import db
from controller.settings import Settings
from controller.vault import RecoveryPoint, Vault

#: guest frozen time buckets (seconds): the agent's freeze is tens to hundreds of ms
FROZEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: job duration buckets (seconds)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
FINISHED = ("completed", "failed", "cancelled")
VM_LABELS = ("vm_uuid", "vm")


class VmBackupCollector(Collector):
    """Builds the metric families from the settings' state DB and vault; cached for cache_s seconds."""

    def __init__(self, settings: Settings, cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._built_at: float | None = None
        self._families: list[Metric] = []
        self.builds = 0

    def collect(self) -> Iterable[Metric]:
        """The cached families, rebuilt when older than cache_s (one build at a time)."""
        with self._lock:
            now = self.clock()
            if self._built_at is None or now - self._built_at >= self.cache_s:
                self._families = self.build()
                self._built_at = now
                self.builds += 1
            return list(self._families)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the DB (families are only known at collect time)."""
        return []

    def build(self) -> list[Metric]:
        """One snapshot: vault points, job aggregates, incidents, vault filesystem."""
        t0 = time.monotonic()
        points = Vault(self.settings.vault).list_points()
        conn = db.connect(self.settings.db_path)
        try:
            out = list(_point_metrics(points))
            out += _job_metrics(conn)
            out.append(_incidents(conn))
        finally:
            conn.close()
        out += _vault_metrics(self.settings, points)
        took = GaugeMetricFamily("vmbackup_metrics_build_seconds", "Time the last metrics snapshot took to build.")
        took.add_metric([], time.monotonic() - t0)
        out.append(took)
        return out


def _ts(iso: str | None) -> float | None:
    """UNIX seconds of a stored ISO 8601 time (UTC assumed when naive); None if missing or unreadable."""
    if not iso:
        return None
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _point_metrics(points: list[RecoveryPoint]) -> Iterator[Metric]:
    """Per-VM point metrics and the guest frozen histogram (points: newest first)."""
    last = GaugeMetricFamily(
        "vmbackup_last_success_timestamp_seconds", "Creation time of the VM's newest recovery point.", labels=VM_LABELS
    )
    cons = GaugeMetricFamily(
        "vmbackup_last_point_consistency",
        "Consistency of the VM's newest point: 0 CRASH, 1 FILE_SYSTEM, 2 APPLICATION.",
        labels=VM_LABELS,
    )
    frozen_last = GaugeMetricFamily(
        "vmbackup_last_point_guest_frozen_seconds", "Guest frozen time of the VM's newest point.", labels=VM_LABELS
    )
    count = GaugeMetricFamily("vmbackup_points", "Recovery points of the VM in the vault.", labels=VM_LABELS)
    stored = GaugeMetricFamily(
        "vmbackup_stored_bytes", "Bytes the VM's recovery points occupy in the vault.", labels=VM_LABELS
    )
    bc_ok = GaugeMetricFamily(
        "vmbackup_boot_check_passed", "1 if the VM's newest boot-checked point passed, else 0.", labels=VM_LABELS
    )
    bc_at = GaugeMetricFamily(
        "vmbackup_boot_check_timestamp_seconds", "When the VM's newest boot-check ran.", labels=VM_LABELS
    )
    from controller.notify.events import boot_check_passed  # the one reading of a manifest's boot_check

    by_vm: dict[str, list[RecoveryPoint]] = {}
    for p in points:
        by_vm.setdefault(p.vm_uuid, []).append(p)
    results = {"passed": 0, "failed": 0}
    frozen: list[float] = []
    for uuid, pts in sorted(by_vm.items()):
        newest = pts[0]
        labels = [uuid, newest.vm_name]
        created = _ts(newest.manifest.created)
        if created is not None:
            last.add_metric(labels, created)
        cons.add_metric(labels, consistency_rank(newest.manifest.consistency))
        if newest.manifest.guest_frozen_ms is not None:
            frozen_last.add_metric(labels, newest.manifest.guest_frozen_ms / 1000.0)
        count.add_metric(labels, len(pts))
        stored.add_metric(labels, sum(p.stored_bytes for p in pts))
        checked = [p for p in pts if p.manifest.boot_check]
        for p in checked:
            results["passed" if boot_check_passed(p.manifest.boot_check or {}) else "failed"] += 1
        if checked:
            bc = checked[0].manifest.boot_check or {}
            bc_ok.add_metric(labels, 1.0 if boot_check_passed(bc) else 0.0)
            at = _ts(bc.get("checked_at"))
            if at is not None:
                bc_at.add_metric(labels, at)
        frozen += [p.manifest.guest_frozen_ms / 1000.0 for p in pts if p.manifest.guest_frozen_ms is not None]
    checks = GaugeMetricFamily(
        "vmbackup_boot_checks", "Points with a boot-check verdict, by result.", labels=["result"]
    )
    for result, n in results.items():
        checks.add_metric([result], n)
    hist = HistogramMetricFamily(
        "vmbackup_guest_frozen_seconds", "Guest frozen time (first FIFREEZE to last FITHAW) of the vault's points."
    )
    hist.add_metric([], _buckets(frozen, FROZEN_BUCKETS), sum_value=sum(frozen))
    yield from (last, cons, frozen_last, count, stored, bc_ok, bc_at, checks, hist)


def _buckets(values: list[float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative histogram buckets of values, with +Inf."""
    out = [(_le(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    return [*out, ("+Inf", float(len(values)))]


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (1.0, 0.25)."""
    return repr(float(bound))


def _job_metrics(conn: sqlite3.Connection) -> list[Metric]:
    """Job counts and bytes by type and state; durations of finished jobs as a histogram."""
    jobs = GaugeMetricFamily(
        "vmbackup_jobs", "Jobs in the state database, by type and state.", labels=["type", "state"]
    )
    nbytes = CounterMetricFamily(
        "vmbackup_job_bytes",
        "Bytes copied by jobs (backup: into the vault), by type and state.",
        labels=["type", "state"],
    )
    for r in conn.execute("SELECT type, state, COUNT(*), SUM(bytes_total) FROM jobs GROUP BY type, state"):
        jobs.add_metric([r[0], r[1]], r[2])
        nbytes.add_metric([r[0], r[1]], float(r[3] or 0))
    dur = "(julianday(ended_at) - julianday(started_at)) * 86400.0"
    cases = ", ".join(f"SUM(CASE WHEN {dur} <= {b!r} THEN 1 ELSE 0 END)" for b in JOB_BUCKETS)
    hist = HistogramMetricFamily(
        "vmbackup_job_duration_seconds",
        "Start-to-end time of finished jobs, by type and state.",
        labels=["type", "state"],
    )
    rows = conn.execute(
        f"SELECT type, state, COUNT(*), SUM({dur}), {cases} FROM jobs"
        f" WHERE state IN {FINISHED!r} AND started_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY type, state"
    )
    for r in rows:
        buckets = [(_le(b), float(r[4 + i] or 0)) for i, b in enumerate(JOB_BUCKETS)]
        hist.add_metric([r[0], r[1]], [*buckets, ("+Inf", float(r[2]))], sum_value=float(r[3] or 0.0))
    return [jobs, nbytes, hist]


def _incidents(conn: sqlite3.Connection) -> Metric:
    """Open notification incidents by kind (every kind, 0 included)."""
    from controller.notify.config import EVENT_KINDS

    g = GaugeMetricFamily("vmbackup_incidents_open", "Open notification incidents, by kind.", labels=["kind"])
    counts = dict(conn.execute("SELECT kind, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY kind").fetchall())
    for kind in EVENT_KINDS:
        g.add_metric([kind], counts.get(kind, 0))
    return g


def _vault_metrics(settings: Settings, points: list[RecoveryPoint]) -> list[Metric]:
    """Bytes the points store, and the vault filesystem's size and available space."""
    stored = GaugeMetricFamily("vmbackup_vault_stored_bytes", "Bytes of all recovery points (their manifests).")
    stored.add_metric([], sum(p.stored_bytes for p in points))
    out: list[Metric] = [stored]
    try:
        st = os.statvfs(settings.vault)
    except OSError:
        return out
    size = GaugeMetricFamily("vmbackup_vault_filesystem_size_bytes", "Size of the vault's filesystem.")
    size.add_metric([], st.f_blocks * st.f_frsize)
    avail = GaugeMetricFamily("vmbackup_vault_filesystem_avail_bytes", "Bytes available to the vault.")
    avail.add_metric([], st.f_bavail * st.f_frsize)
    return [*out, size, avail]
