"""One vmbackup backup of a VM, measured the way every contender is: wall time and bytes on the target."""

from __future__ import annotations

import time
from typing import Any

from bench.common import allocated, apparent
from controller.backup.engine import BackupEngine, BackupRequest
from controller.jobs.model import parse_time
from controller.jobs.store import JobStore
from controller.settings import Settings
from controller.state import open_state
from controller.vault import compress


def backup_once(
    settings: Settings, vm: str, keep: bool, full: bool = True, compression: str = compress.DEFAULT
) -> dict[str, Any]:
    """Run BackupEngine once (a full unless asked: the benchmarks compare full backups; bench/incremental.py
    measures incrementals); return its numbers; delete the point unless keep."""
    with open_state(settings) as st:
        t0 = time.monotonic()
        with BackupEngine(st) as engine:
            res = engine.run(BackupRequest(vm=vm, full=full, compression=compression))
        wall = time.monotonic() - t0
        vault = st.vault
        job_phases = JobStore(st.db).get(res.job_id).phases
        phases = {p.name: p.duration_s or 0.0 for p in job_phases}
        windows = {p.name: [_epoch(p.started_at), _epoch(p.ended_at or p.started_at)] for p in job_phases}
    point = vault.get_point(res.point_id)
    pdir = vault.point_path(point)
    out = {
        "wall_s": wall,
        # the job's own phase timings: the Freeze RPC (guest sync + FIFREEZE + hooks), the libvirt snapshot
        # (inside the window), the Thaw RPC (ends the window)
        "phase_ms": {k: round(v * 1000, 1) for k, v in phases.items() if k in ("freeze", "snapshot", "thaw")},
        "engine_duration_s": res.duration_s,
        "freeze_window_ms": res.freeze_window_ms,
        "consistency": res.consistency,
        "bytes_written": allocated(pdir),
        "apparent_bytes": apparent(pdir),
        "point_id": res.point_id,
        "phase_windows": windows,  # each phase's [start, end], host epoch seconds
    }
    if not keep:
        vault.delete_point(point)
    return out



def _epoch(stored: str) -> float:
    """A stored job time as epoch seconds."""
    when = parse_time(stored)
    assert when is not None  # a phase always has its start
    return when.timestamp()
