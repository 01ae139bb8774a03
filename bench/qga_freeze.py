"""Benchmark 7 (issue #19): the freeze window through qemu-guest-agent (qga) vs the vmbackup agent, same VM.

One lab VM (/data1 holding real data), registered with the vmbackup agent (installed over SSH); its qemu-guest-agent
runs too (the lab image ships it). The backups alternate agent, qga, agent, qga ... (the registration row's quiescer
is switched between them; nothing else changes), each a full backup with the guest writer (a timestamp + fsync every
10 ms on /data1) running, the page cache dropped before each. Recorded per quiescer: the controller's freeze window
(agent: Frozen reply to Thaw reply; qga: fsFreeze return to fsThaw return), the point's guest_frozen_ms (the agent's
first FIFREEZE to last FITHAW; qemu-ga reports no such time, so None for qga), the writer's longest stall (what the
guest saw, for both), and the freeze/snapshot/thaw phases.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bench.common import GiB, summary
from bench.freeze import backup_with_writer, label
from bench.guest import BenchVm, boot_vm, destroy_vm, register
from controller import db
from controller.registration.store import get_registration, save
from controller.settings import Settings

NAME = "qga"
QUIESCERS = ("agent", "qga")


def set_quiescer(settings: Settings, vm: BenchVm, quiescer: str) -> None:
    """Switch the VM's registration to quiescer (the agent's endpoints and certificate stay as they are)."""
    conn = db.connect(settings.db_path)
    try:
        reg = get_registration(conn, vm.uuid)
        assert reg is not None, f"{vm.name} is not registered"
        save(conn, dataclasses.replace(reg, quiescer=quiescer))
    finally:
        conn.close()


def one_backup(settings: Settings, vm: BenchVm, samples: dict[str, list[Any]]) -> None:
    """One full backup with the writer running; append its numbers to samples; the point is deleted."""
    r, gaps, guest_ms = backup_with_writer(settings, vm)
    samples["consistency"].append(r["consistency"])
    samples["stall"].append(max(gaps) * 1000)
    if r["freeze_window_ms"] is not None:
        samples["window"].append(r["freeze_window_ms"])
    if guest_ms is not None:
        samples["guest"].append(guest_ms)
    for k, v in r["phase_ms"].items():
        samples.setdefault(k, []).append(v)


def run_bench(settings: Settings, reps: int, data_bytes: int = 1 * GiB) -> dict[str, Any]:
    """reps backups per quiescer, alternating, on one VM; the result per quiescer."""
    vm = boot_vm(settings, f"b{os.getpid()}-qga", data_bytes)
    per: dict[str, dict[str, list[Any]]] = {
        q: {"window": [], "guest": [], "stall": [], "consistency": []} for q in QUIESCERS
    }
    try:
        register(settings, vm)
        for _ in range(reps):
            for q in QUIESCERS:
                set_quiescer(settings, vm, q)
                one_backup(settings, vm, per[q])
    finally:
        destroy_vm(settings, vm.name)
    rows = {q: _row(s) for q, s in per.items()}
    for q, row in rows.items():
        print(f"  {q}: window p50 {row['freeze_window_ms']['median']} ms p95 {row['freeze_window_ms']['p95']} ms; "
              f"writer's longest stall p50 {row['writer_max_stall_ms']['median']} ms", flush=True)
    return {
        "size": label(data_bytes),
        "reps": reps,
        "quiescers": rows,
        "qga_over_agent_window_p50": _ratio(rows, "freeze_window_ms"),
        "qga_over_agent_stall_p50": _ratio(rows, "writer_max_stall_ms"),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "method": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
    }


def _row(s: dict[str, list[Any]]) -> dict[str, Any]:
    """Summaries of one quiescer's samples."""
    return {
        "freeze_window_ms": summary(s["window"]),
        "guest_frozen_ms": summary(s["guest"]),
        "writer_max_stall_ms": summary(s["stall"]),
        "phase_ms": {k: summary(s.get(k, [])) for k in ("freeze", "snapshot", "thaw")},
        "consistency": s["consistency"],
    }


def _ratio(rows: dict[str, dict[str, Any]], key: str) -> float | None:
    """qga's p50 / the agent's p50 of a measure."""
    a, q = rows["agent"][key]["median"], rows["qga"][key]["median"]
    return round(q / a, 2) if a and q else None


def _f(x: Any) -> str:
    """A table cell: one decimal, '-' for None."""
    return "-" if x is None else f"{x:.1f}"


def render(r: dict[str, Any]) -> list[str]:
    """The markdown table of this benchmark."""
    rows = [f"Same VM, {r['size']} on /data1, {r['reps']} full backups per quiescer, alternating.", "",
            "| quiescer | backups | freeze window p50 ms | p95 ms | guest frozen p50 ms | p95 ms "
            "| writer's longest stall p50 ms | p95 ms | freeze phase p50 ms | thaw phase p50 ms | consistency |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for q, s in r["quiescers"].items():
        fw, gf, st, ph = s["freeze_window_ms"], s["guest_frozen_ms"], s["writer_max_stall_ms"], s["phase_ms"]
        kinds = ", ".join(sorted(set(s["consistency"])))
        rows.append(f"| {q} | {fw['n']} | {_f(fw['median'])} | {_f(fw['p95'])} | {_f(gf['median'])} "
                    f"| {_f(gf['p95'])} | {_f(st['median'])} | {_f(st['p95'])} | {_f(ph['freeze']['median'])} "
                    f"| {_f(ph['thaw']['median'])} | {kinds} |")
    rows.append(f"\nqga / agent p50: freeze window {r['qga_over_agent_window_p50']}, writer's longest stall "
                f"{r['qga_over_agent_stall_p50']}. Guest frozen is measured by the vmbackup agent only (qemu-ga "
                f"reports no freeze time). Load average at the end: {r['load_avg_at_end']}.")
    return rows
