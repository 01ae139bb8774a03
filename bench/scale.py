"""Benchmark 5: controller scale with N simulated VMs and jobs (no real VMs): scheduler planning a day, and
the `jobs` and `dashboard --json` commands and the web dashboard's page answering, for N = 100, 1,000, 10,000.

Simulated = rows written straight into a private state.db (vms, protections, jobs with 4 phases each);
the code measured is the real scheduler and the real CLI, run as a user would (a fresh `vmbackup` process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ratio, summary
from controller import db
from controller.policies.model import Schedule
from controller.scheduling.schedule import Bound, plan

NAME = "scale"
SCHEDULES = [
    Schedule("daily", hour=22, timezone="Europe/Berlin"),
    Schedule("daily", hour=2, minute=30),
    Schedule("hourly", every=4, minute=15),
    Schedule("weekly", hour=1, days=(5, 6), timezone="America/New_York"),
]
PHASES = ("precheck", "freeze", "snapshot", "copy")


def populate(path: Path, n: int) -> None:
    """N VMs, N protections and N finished backup jobs (4 phases each) in a fresh state.db at path, and the
    policies p0..p3 (one per schedule of SCHEDULES) that the protections name, so `dashboard` plans every VM."""
    from controller.policies.model import Policy
    from controller.policies.parse import to_yaml
    from controller.policies.store import save_policy

    conn = db.connect(path)
    for k, sched in enumerate(SCHEDULES):
        pol = Policy(f"p{k}", sched)
        save_policy(conn, pol, to_yaml(pol))
    now = datetime.now(UTC)
    vms, prots, jobs, phases = [], [], [], []
    for i in range(n):
        u = f"{i:08x}-0000-4000-8000-{i:012x}"
        t = (now - timedelta(days=1) * (n - i) / n).isoformat(timespec="microseconds")  # all within the last day
        vms.append((u, f"vm{i:05d}", "qemu:///system", "running", "[]", t, t, 0))
        prots.append((u, f"p{i % len(SCHEDULES)}", "protected", t, f"vm{i:05d}"))
        jid = f"{t[:19].replace(':', '').replace('-', '')}-{i:06x}"
        state = "failed" if i % 17 == 0 else "completed"
        jobs.append((jid, "backup", u, f"vm{i:05d}", "qemu:///system", state, t, t, t, 1 << 30, "{}", os.getpid()))
        phases += [(jid, k, p, "completed", t, t, 0.5, None) for k, p in enumerate(PHASES)]
    with db.transaction(conn) as c:
        c.executemany("INSERT INTO vms VALUES (?,?,?,?,?,?,?,?)", vms)
        c.executemany("INSERT INTO protections (vm_uuid, policy, state, since, vm_name) VALUES (?,?,?,?,?)", prots)
        c.executemany("INSERT INTO jobs (id, type, vm_uuid, vm_name, host_uri, state, created_at, started_at,"
                      " ended_at, bytes_total, details_json, owner_pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
        c.executemany("INSERT INTO job_phases VALUES (?,?,?,?,?,?,?,?)", phases)
    conn.close()


def plan_day(path: Path) -> tuple[float, int]:
    """Read the protections and last runs, plan the next 24 h; return (seconds, runs planned)."""
    t0 = time.monotonic()
    conn = db.connect(path)
    rows = conn.execute("SELECT vm_uuid, vm_name, policy, since FROM protections WHERE state = 'protected'").fetchall()
    last = {r[0]: datetime.fromisoformat(r[1]) for r in conn.execute(
        "SELECT vm_uuid, MAX(ended_at) FROM jobs WHERE type = 'backup' AND state = 'completed' GROUP BY vm_uuid")}
    bounds = [Bound(r[0], r[1], r[2], SCHEDULES[int(r[2][1:])], datetime.fromisoformat(r[3])) for r in rows]
    runs = plan(bounds, last, datetime.now(UTC), horizon=timedelta(days=1))
    conn.close()
    return time.monotonic() - t0, len(runs)


def cli(home: Path, *args: str) -> tuple[float, int, float]:
    """Run `vmbackup ARGS` as a fresh process on that home (output piped); return (seconds, bytes of output,
    CPU seconds of the process: user + system, which other load on the machine inflates far less than wall time)."""
    env = {**os.environ, "VMBACKUP_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "controller.cli.main", *args], env=env, capture_output=True,
                       timeout=600, check=False)
    dt = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"])
    return dt, len(p.stdout), after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def web_page(home: Path, reps: int) -> dict[str, Any]:
    """The web dashboard's overview (`serve --http`, in this process) on that home: reps GETs of `/` as wall
    seconds, and this process' CPU seconds per GET (server thread + the urllib client). The server's dashboard
    cache is off (cache_s=0): every GET builds the dashboard, the page's worst case."""
    from controller import settings as settings_mod
    from controller.web.server import start
    from controller.web.token import load_or_create

    s = dataclasses.replace(settings_mod.load(), home=home, vault=home / "vault")
    srv = start(s, "127.0.0.1:0", cache_s=0)
    req = urllib.request.Request(srv.url, headers={"Authorization": f"Bearer {load_or_create(s)}"})
    walls, cpus = [], []
    try:
        for _ in range(reps + 1):  # the first GET warms the imports of the page code: not counted
            c0, t0 = time.process_time(), time.monotonic()
            with urllib.request.urlopen(req, timeout=600) as resp:
                resp.read()
            walls.append(time.monotonic() - t0)
            cpus.append(time.process_time() - c0)
    finally:
        srv.close()
    return {"web / (page)": summary(walls[1:]), "web / (page) cpu": summary(cpus[1:])}


def has_command(name: str) -> bool:
    """True if controller/cli/<name>_cmd.py exists (the CLI auto-discovers commands from there)."""
    return (Path(__file__).resolve().parent.parent / "controller" / "cli" / f"{name}_cmd.py").exists()


def run_bench(ns: list[int], reps: int, work: Path) -> dict[str, Any]:
    """For each N: populate, then reps timings of plan_day, `jobs --json` (default page and all N), `dashboard
    --json` (wall and CPU seconds of a fresh process) and the web dashboard's overview page (`serve --http`)."""
    out: dict[str, Any] = {"ns": {}, "note": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""}
    cmds: dict[str, list[str]] = {"jobs --json": ["jobs", "--json"]}
    if has_command("dashboard"):
        cmds["dashboard --json"] = ["dashboard", "--json"]
    else:
        out["dashboard"] = "not run: controller/cli/dashboard_cmd.py does not exist yet"
    baseline = {k: cli(work, "errors")[0] for k in ("startup",)}  # `vmbackup errors`: process start cost
    out["cli_startup_s"] = round(baseline["startup"], 3)
    for n in ns:
        home = work / f"n{n}"
        home.mkdir(parents=True, exist_ok=True)
        populate(home / "state.db", n)
        r: dict[str, Any] = {}
        pl = [plan_day(home / "state.db") for _ in range(reps)]
        r["plan_day_s"] = summary([p[0] for p in pl])
        r["planned_runs"] = pl[0][1]
        every = {**cmds, f"jobs --json --limit {n}": ["jobs", "--json", "--limit", str(n)]}
        for label, args in every.items():
            try:
                runs = [cli(home, *args) for _ in range(reps)]
                r[label], r[f"{label} cpu"] = summary([x[0] for x in runs]), summary([x[2] for x in runs])
            except RuntimeError as e:
                r[label] = {"status": f"not run: {e}"}
        r.update(web_page(home, reps))
        r["load_avg_after"] = round(os.getloadavg()[0], 2)  # wall times mean little when this is high
        out["ns"][str(n)] = r
        print(f"  scale N={n}: plan {r['plan_day_s']['median']} s, " +
              ", ".join(f"{k} {v.get('median')} s" for k, v in r.items() if isinstance(v, dict) and k != "plan_day_s"))
    first, last = str(ns[0]), str(ns[-1])
    if first != last:
        out["growth_" + f"{last}_over_{first}"] = {
            k: ratio(out["ns"][last][k].get("median"), out["ns"][first][k].get("median"))
            for k in out["ns"][first] if isinstance(out["ns"][first][k], dict) and k in out["ns"][last]
        }
    json.dumps(out)  # fail here, not in the report, if something is not serialisable
    return out

