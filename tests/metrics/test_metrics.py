"""The Prometheus endpoint over a real state DB and vault: `vmbackup serve --metrics 127.0.0.1:0` is scraped with
urllib and every metric family is checked against the points (written through PointWriter) and job rows."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import db, settings
from controller.jobs.store import JobStore
from controller.metrics.collector import VmBackupCollector
from controller.metrics.exceptions import MetricsListenFailed
from controller.metrics.server import parse_address, start
from controller.scheduling.serve import Runners, ServeOptions, Server
from controller.vault import Vault
from tests.helpers import made_up_registration
from tests.notify.helpers import job, point

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """GET the endpoint and parse it: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def vm(uuid: str, name: str) -> tuple[tuple[str, str], ...]:
    """The label set of a VM's series."""
    return (("vm", name), ("vm_uuid", uuid))


@pytest.fixture
def state(private_settings: settings.Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two VMs with real points (consistency, guest frozen time, a boot-check each way) and finished jobs."""
    home = private_settings
    conn = db.connect(home.db_path)
    jobs = JobStore(conn)
    web, dbvm = made_up_registration("web1").vm_uuid, made_up_registration("db1").vm_uuid
    t0 = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
    point(home, tmp_path, web, "web1", t0, "CRASH", guest_frozen_ms=40.0)
    point(
        home,
        tmp_path,
        web,
        "web1",
        t0 + timedelta(days=1),
        "FILE_SYSTEM",
        guest_frozen_ms=180.0,
        boot_check={"result": "failed", "reason": "no login", "checked_at": "2026-11-21T23:00:00+00:00"},
    )
    newest = t0 + timedelta(days=2)
    point(home, tmp_path, web, "web1", newest, "APPLICATION", guest_frozen_ms=3000.0)
    point(
        home,
        tmp_path,
        dbvm,
        "db1",
        t0,
        "FILE_SYSTEM",
        boot_check={"result": "passed", "reason": "", "checked_at": "2026-11-20T23:00:00+00:00"},
    )
    ok1 = job(jobs, web, "web1", nbytes=1000)
    ok2 = job(jobs, web, "web1", nbytes=500)
    bad = job(jobs, dbvm, "db1", fail=True)
    job(jobs, dbvm, "db1", type="boot-check")
    for jid, secs in ((ok1, 3.0), (ok2, 90.0), (bad, 0.5)):
        conn.execute(
            "UPDATE jobs SET started_at = ?, ended_at = ? WHERE id = ?",
            (t0.isoformat(), (t0 + timedelta(seconds=secs)).isoformat(), jid),
        )
    yield {"home": home, "web": web, "db": dbvm, "newest": newest, "conn": conn}
    conn.close()


def test_scrape_reports_points_jobs_vault_and_boot_checks(state: dict[str, Any]) -> None:
    """Every family the issue asks for, with the values the DB and vault hold."""
    home, web, dbvm = state["home"], state["web"], state["db"]
    srv = start(home, "127.0.0.1:0")
    try:
        assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}/metrics"
        m = scrape(srv.url)
    finally:
        srv.close()
    W, D = vm(web, "web1"), vm(dbvm, "db1")
    assert m[("vmbackup_last_success_timestamp_seconds", W)] == state["newest"].timestamp()
    assert m[("vmbackup_last_point_consistency", W)] == 2 and m[("vmbackup_last_point_consistency", D)] == 1
    assert m[("vmbackup_last_point_guest_frozen_seconds", W)] == 3.0
    assert m[("vmbackup_points", W)] == 3 and m[("vmbackup_points", D)] == 1
    stored = {p.vm_uuid: 0 for p in Vault(home.vault).list_points()}
    for p in Vault(home.vault).list_points():
        stored[p.vm_uuid] += p.stored_bytes
    assert m[("vmbackup_stored_bytes", W)] == stored[web] > 0
    assert m[("vmbackup_vault_stored_bytes", ())] == sum(stored.values())
    # boot-checks: web1's newest checked point failed, db1's passed
    assert m[("vmbackup_boot_check_passed", W)] == 0 and m[("vmbackup_boot_check_passed", D)] == 1
    assert m[("vmbackup_boot_check_timestamp_seconds", D)] == datetime(2026, 11, 20, 23, tzinfo=UTC).timestamp()
    assert m[("vmbackup_boot_checks", (("result", "failed"),))] == 1
    assert m[("vmbackup_boot_checks", (("result", "passed"),))] == 1
    # guest frozen histogram over the 3 points that record it: 0.04, 0.18, 3.0 s
    assert m[("vmbackup_guest_frozen_seconds_count", ())] == 3
    assert m[("vmbackup_guest_frozen_seconds_sum", ())] == pytest.approx(3.22)
    assert m[("vmbackup_guest_frozen_seconds_bucket", (("le", "0.05"),))] == 1
    assert m[("vmbackup_guest_frozen_seconds_bucket", (("le", "0.25"),))] == 2
    assert m[("vmbackup_guest_frozen_seconds_bucket", (("le", "2.5"),))] == 2
    assert m[("vmbackup_guest_frozen_seconds_bucket", (("le", "+Inf"),))] == 3
    # jobs by type and state, bytes, durations
    done, failed = (("state", "completed"), ("type", "backup")), (("state", "failed"), ("type", "backup"))
    assert m[("vmbackup_jobs", done)] == 2 and m[("vmbackup_jobs", failed)] == 1
    assert m[("vmbackup_jobs", (("state", "completed"), ("type", "boot-check")))] == 1
    assert m[("vmbackup_job_bytes_total", done)] == 1500
    assert m[("vmbackup_job_duration_seconds_count", done)] == 2
    assert m[("vmbackup_job_duration_seconds_sum", done)] == pytest.approx(93.0, abs=0.01)
    bucket = "vmbackup_job_duration_seconds_bucket"
    assert m[(bucket, (("le", "5.0"), *done))] == 1 and m[(bucket, (("le", "120.0"), *done))] == 2
    assert m[(bucket, (("le", "1.0"), *failed))] == 1 and m[(bucket, (("le", "+Inf"), *failed))] == 1
    # vault filesystem, incidents (none yet), the process collector
    assert m[("vmbackup_vault_filesystem_size_bytes", ())] >= m[("vmbackup_vault_filesystem_avail_bytes", ())] > 0
    assert m[("vmbackup_incidents_open", (("kind", "job_failed"),))] == 0
    assert ("process_cpu_seconds_total", ()) in m


def test_snapshot_is_cached(state: dict[str, Any]) -> None:
    """Scrapes within cache_s reuse one build; after it, a new point shows."""
    now = [100.0]
    c = VmBackupCollector(state["home"], cache_s=5.0, clock=lambda: now[0])
    names = lambda: {f.name for f in c.collect()}  # noqa: E731
    assert "vmbackup_points" in names() and "vmbackup_points" in names()
    assert c.builds == 1
    now[0] += 6
    c.collect()
    assert c.builds == 2


def test_serve_starts_the_endpoint_and_stops_it(state: dict[str, Any]) -> None:
    """`serve --metrics 127.0.0.1:0`: scrapeable while serve runs, the port is released at shutdown."""
    server = Server(
        state["home"],
        ServeOptions(metrics="127.0.0.1:0", prune_every=timedelta(0), verify_every=timedelta(0)),
        Runners(),
    )
    server.start()
    try:
        assert server.metrics_url is not None
        m = scrape(server.metrics_url)
        assert m[("vmbackup_points", vm(state["web"], "web1"))] == 3
    finally:
        server.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.metrics_url, timeout=2)


def test_bad_addresses() -> None:
    """HOST:PORT only; a port in use is METRICS_LISTEN_FAILED."""
    assert parse_address("127.0.0.1:9470") == ("127.0.0.1", 9470) and parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9470", "127.0.0.1", "127.0.0.1:99999", "a:b"):
        with pytest.raises(Exception, match="HOST:PORT"):
            parse_address(bad)
    srv = start(settings.load(), "127.0.0.1:0")
    try:
        with pytest.raises(MetricsListenFailed):
            start(settings.load(), f"127.0.0.1:{srv.port}")
    finally:
        srv.close()
