"""Writing the results: latest.json (everything, raw samples included) and latest.md (a short table each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import compression, qga_freeze
from bench.common import ratio


def _f(x: Any, nd: int = 1) -> str:
    """A number for a table cell ('-' for None)."""
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _freeze(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 1."""
    rows = ["| data on /data1 | backups | guest frozen p50 ms | p95 ms | writer's longest stall p50 ms "
            "| stall - guest frozen max ms | freeze window p50 ms | p95 ms | of which snapshot p50 ms | thaw p50 ms "
            "| Freeze RPC p50 ms (before the window) | backup wall p50 s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r.get("sizes", []):
        fw, bw, ph = s["freeze_window_ms"], s["backup_wall_s"], s.get("phase_ms", {})
        gf, st, over = (s.get(k) or {} for k in ("guest_frozen_ms", "writer_max_stall_ms",
                                                 "stall_over_guest_frozen_ms"))
        p50 = {k: _f((ph.get(k) or {}).get("median")) for k in ("snapshot", "thaw", "freeze")}
        rows.append(f"| {s['size']} | {fw['n']} | {_f(gf.get('median'))} | {_f(gf.get('p95'))} "
                    f"| {_f(st.get('median'))} | {_f(over.get('max'))} | {_f(fw['median'])} | {_f(fw['p95'])} "
                    f"| {p50['snapshot']} | {p50['thaw']} | {p50['freeze']} | {_f(bw['median'])} |")
    where = "; ".join(f"{s['size']}: " + ", ".join(f"{k} x{n}" for k, n in s["longest_stall_phases"].items())
                      for s in r.get("sizes", []) if s.get("longest_stall_phases"))
    if where:
        rows.append(f"\nThe phase each backup's longest writer stall fell in (guest clock aligned over SSH): {where}.")
    rows.append(f"\nLargest / smallest median freeze window: {_f(r.get('largest_over_smallest_median'), 2)}; "
                f"guest frozen: {_f(r.get('guest_frozen_largest_over_smallest_median'), 2)}. Goals (issue #16): "
                "guest frozen p50 <= 60 ms, p95 <= 150 ms, flat across sizes; stall - guest frozen <= 30 ms.")
    return rows


def _copy(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 2."""
    rows = []
    for key in ("filled_qcow2", "sparse_raw"):
        c = r.get(key)
        if not c:
            continue
        size = f"virtual {c['virtual_bytes'] / 2**30:.2f} GiB, allocated {c['source_allocated'] / 2**20:.0f} MiB"
        rows += [f"\n{key}: {size}\n",
                 "| method | p50 s | MB/s | stored MiB | time / vmbackup |", "|---|---|---|---|---|"]
        for name, m in c["methods"].items():
            rows.append(f"| {name} | {_f(m['seconds']['median'], 2)} | {_f(m['mb_per_s'])} | "
                        f"{m['stored_bytes'] / 2**20:.0f} | {_f(m['time_ratio_to_vmbackup'], 2)} |")
    if r.get("goals"):
        rows += ["\n| goal (issue #16) | measured | target | met |", "|---|---|---|---|"]
        rows += [f"| {k} | {_f(g['measured'], 3)} | {g['target']} | {'-' if g['met'] is None else g['met']} |"
                 for k, g in r["goals"].items()]
    if r.get("note"):
        rows.append(f"\n{r['note']}")
    return rows


def _full(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 3."""
    rows = ["| tool | wall p50 s | written MiB | longest guest write stall p50 ms | wall / vmbackup "
            "| stall / vmbackup |", "|---|---|---|---|---|---|"]
    for name, c in r.get("contenders", {}).items():
        if "wall_s" not in c:
            rows.append(f"| {name} | {c['status']} | | | | |")
            continue
        rat = c.get("ratio_to_vmbackup", {})
        rows.append(f"| {name} | {_f(c['wall_s']['median'])} | {_f((c['bytes_written']['median'] or 0) / 2**20, 0)} | "
                    f"{_f(c['max_stall_ms']['median'], 0)} | {_f(rat.get('wall_s'), 2)} | "
                    f"{_f(rat.get('max_stall_ms'), 2)} |")
    return rows + _full_goals(r.get("contenders", {}))


def _full_goals(cs: dict[str, Any]) -> list[str]:
    """Issue #16 item 4 against virtnbdbackup: wall <= 0.8 x, stall <= 1.0 x, for each vmbackup row."""
    other = cs.get("virtnbdbackup", {})
    if "wall_s" not in other:
        return []
    rows = ["", "| goal (issue #16) | measured | target |", "|---|---|---|"]
    for name, c in cs.items():
        if not name.startswith("vmbackup") or "wall_s" not in c:
            continue
        wall = ratio(c["wall_s"]["median"], other["wall_s"]["median"])
        stall = ratio(c["max_stall_ms"]["median"], other["max_stall_ms"]["median"])
        rows += [f"| {name} wall / virtnbdbackup wall | {_f(wall, 3)} | <= 0.8 |",
                 f"| {name} stall / virtnbdbackup stall | {_f(stall, 3)} | <= 1.0 |"]
    return rows


def _restore(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 4."""
    c, b = r["restore_bootcheck_s"], r["cold_boot_to_ssh_s"]
    rows = ["| measure | p50 s | p95 s |", "|---|---|---|",
            f"| restore + boot-check | {_f(c['median'])} | {_f(c['p95'])} |",
            f"| cold boot to SSH | {_f(b['median'])} | {_f(b['p95'])} |"]
    if isinstance(r.get("cold_boot_to_agent_s"), dict):
        a = r["cold_boot_to_agent_s"]
        rows.append(f"| cold boot to SSH + agent answering | {_f(a['median'])} | {_f(a['p95'])} |")
    for key, label in (("copy_path_restore_bootcheck_s", "copy path restore + boot-check (old)"),
                       ("bootcheck_16g_s", "boot-check, 16 GiB point")):
        if isinstance(r.get(key), dict):
            rows.append(f"| {label} | {_f(r[key]['median'])} | {_f(r[key]['p95'])} |")
    rows.append(f"\nRatio restore+boot-check / cold boot to the same proofs (SSH + agent): "
                f"{_f(r.get('ratio_restore_bootcheck_to_cold_boot'), 2)}")
    if r.get("ratio_restore_bootcheck_to_cold_boot_ssh_only") is not None:
        rows.append(f"Ratio restore+boot-check / cold boot to SSH only: "
                    f"{_f(r.get('ratio_restore_bootcheck_to_cold_boot_ssh_only'), 2)}")
    if r.get("ratio_16g_to_2g_bootcheck") is not None:
        rows.append(f"Ratio boot-check 16 GiB / 2 GiB point: {_f(r.get('ratio_16g_to_2g_bootcheck'), 2)}")
    for key in ("instant_restore_2g", "instant_restore_16g"):
        if isinstance(r.get(key), dict):
            rows.append(f"{key}: started in {_f(r[key]['started_s'])} s, SSH after {_f(r[key]['ssh_s'])} s")
    return rows


def _scale(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 5."""
    ns = r.get("ns", {})
    cols = sorted({k for v in ns.values() for k, x in v.items() if isinstance(x, dict) and "median" in x
                   and not k.startswith("jobs --json --limit")})
    rows = ["| N | planned runs | " + " | ".join(f"{c} p50 s" for c in cols) + " | jobs (all N) p50 s |",
            "|---|---|" + "---|" * (len(cols) + 1)]
    for n, v in ns.items():
        allk: dict[str, Any] = next((v[k] for k in v if k.startswith("jobs --json --limit")), {})
        rows.append(f"| {n} | {v.get('planned_runs')} | " + " | ".join(_f(v[c].get("median"), 3) for c in cols)
                    + f" | {_f(allk.get('median'), 3)} |")
    if r.get("dashboard"):
        rows.append(f"\ndashboard: {r['dashboard']}")
    rows.append(f"\nCLI process start-up (`vmbackup errors`): {r.get('cli_startup_s')} s")
    return rows


def _mib(x: Any) -> str:
    """Bytes as MiB for a table cell ('-' for None)."""
    return "-" if x is None else f"{x / 2**20:.1f}"


def _incremental(r: dict[str, Any]) -> list[str]:
    """Table of benchmark 6."""
    v, n = r["vmbackup"], r["virtnbdbackup"]
    rows = [f"Data disk {_mib(r['data_bytes'])} MiB, {_mib(r['rewrite_bytes'])} MiB rewritten before each "
            "incremental.\n", "| tool | full wall s | full stored MiB | inc wall p50 s | inc changed p50 MiB "
            "| inc stored p50 MiB |", "|---|---|---|---|---|---|",
            f"| vmbackup | {_f(v['full']['wall_s'])} | {_mib(v['full']['stored_bytes'])} | "
            f"{_f(v['inc_wall_s']['median'], 2)} | {_mib(v['inc_changed_bytes']['median'])} | "
            f"{_mib(v['inc_stored_bytes']['median'])} |"]
    if n.get("status") == "ok":
        rows.append(f"| virtnbdbackup | {_f(n['full']['wall_s'])} | {_mib(n['full']['stored_bytes'])} | "
                    f"{_f(n['inc_wall_s']['median'], 2)} | - | {_mib(n['inc_stored_bytes']['median'])} |")
    else:
        rows.append(f"| virtnbdbackup | {n.get('status')} | | | | |")
    rows.append(f"\nIdle incremental: wall p50 {_f(v['idle_wall_s']['median'], 2)} s, beyond freeze + snapshot + "
                f"thaw + commit p50 {_f(v['idle_overhead_s']['median'], 2)} s.\n")
    rows += ["| ratio | measured | target | met |", "|---|---|---|---|"]
    for k, limit in r["targets"].items():
        met = r["met"].get(k)
        rows.append(f"| {k} | {_f(r['ratios'].get(k), 3)} | <= {limit} | {'-' if met is None else met} |")
    rows.append(f"| stored_over_written | {_f(r['ratios'].get('stored_over_written'), 3)} | | |")
    rows += [""] + [f"- {x}" for x in r.get("notes", [])]
    return rows


RENDER = {"freeze": _freeze, "copy": _copy, "full_backup": _full, "restore": _restore, "scale": _scale,
          "incremental": _incremental, "qga": qga_freeze.render, "compression": compression.render}
TITLES = {"freeze": "1. Freeze window", "copy": "2. Vault copy throughput",
          "full_backup": "3. Full backup of a running VM", "restore": "4. Restore + boot-check vs cold boot",
          "scale": "5. Controller scale", "incremental": "6. Incremental backups (full, 1 % rewritten, idle)",
          "qga": "7. Freeze window: qemu-guest-agent vs the vmbackup agent (same VM)",
          "compression": "8. Vault compression: full copy with zstd vs none (issue #17)"}


def markdown(res: dict[str, Any]) -> str:
    """The short markdown report."""
    m, v = res["machine"], res["versions"]
    lines = [f"# vmbackup benchmarks ({'smoke' if res['smoke'] else 'full'} run, {res['started']})", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
             f"kernel {m['kernel']}; "
             f"load at start {m['load_avg_at_start']}. Virtualization: **{res['virt_type']}**.",
             f"Versions: vmbackup {v['vmbackup']}, libvirt {v['libvirt']}, {v['qemu']}, virtnbdbackup "
             f"{v['virtnbdbackup'] or 'absent'}, virt-backup {v['virt_backup'] or 'absent'}.",
             f"Cache state: {res['cache_state']}", ""]
    lines += [f"- {n}" for n in res.get("notes", [])]
    for key, title in TITLES.items():
        b = res["benchmarks"].get(key)
        lines += ["", f"## {title}", ""]
        if b is None:
            lines.append("not selected in this run")
        elif isinstance(b, str):
            lines.append(b)
        else:
            lines += RENDER[key](b)
    return "\n".join(lines) + "\n"


def write(res: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write latest.json and latest.md into out."""
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "latest.json", out / "latest.md"
    j.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")
    md.write_text(markdown(res))
    return j, md
