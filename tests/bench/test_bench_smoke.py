"""The benchmark harness keeps working: unit checks of its statistics and report, and the real smoke run.

The smoke run (``python -m bench.run --smoke``) boots one lab VM, registers it, backs it up with vmbackup and the
contenders, copies a small image three ways and plans a day for 100 simulated VMs, then runs the incremental
benchmark on two more VMs, one after the other; it takes the VM lock
(/tmp/vmbackup-vm.lock) itself, so do NOT run this test under ``flock`` on that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.common import ratio, summary
from bench.env import make_plan

ROOT = Path(__file__).resolve().parents[2]


def test_summary_median_p95_and_ratio() -> None:
    """Medians and nearest-rank p95 of known samples; ratios refuse a zero or missing base."""
    s = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["p95"], s["min"], s["max"], s["n"]) == (3.0, 5.0, 1.0, 5.0, 5)
    assert summary(list(range(1, 101)))["p95"] == 95
    assert summary([])["median"] is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0) is None and ratio(None, 1.0) is None


def test_full_plan_scales_down_with_little_space() -> None:
    """With too little free space the 16 GiB (and 4 GiB) sizes are dropped, with a note saying so."""
    roomy = make_plan(False, 500 << 30)
    assert roomy.freeze_sizes == [1 << 30, 4 << 30, 16 << 30]
    tight = make_plan(False, 20 << 30)
    assert tight.freeze_sizes == [1 << 30]
    assert any("16 GiB dropped" in n for n in tight.notes) and any("4 GiB dropped" in n for n in tight.notes)
    assert make_plan(True, 500 << 30).freeze_reps == 1


def test_markdown_shows_not_run_reasons() -> None:
    """A contender that could not run appears with its reason, never with a number."""
    res = {
        "smoke": True, "started": "t", "virt_type": "qemu", "cache_state": "cold", "notes": [],
        "machine": {"cpu_model": "x", "cores": 2, "memory_gib": 4, "os": "d", "kernel": "k", "load_avg_at_start": []},
        "versions": {"vmbackup": "0", "libvirt": "9", "qemu": "q", "virtnbdbackup": None, "virt_backup": None},
        "benchmarks": {"full_backup": {"contenders": {"virtnbdbackup": {"status": "not run: absent"}}}},
    }
    md = report.markdown(res)
    assert "| virtnbdbackup | not run: absent |" in md
    assert "not selected in this run" in md


@pytest.mark.vm
@pytest.mark.timeout(1500)
def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    """`python -m bench.run --smoke` finishes, and every benchmark it ran produced real, plausible numbers."""
    env = {k: v for k, v in os.environ.items() if k != "VMBACKUP_HOME"}
    p = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1400, check=False)
    print(p.stdout[-4000:], p.stderr[-4000:])
    res = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# vmbackup benchmarks (smoke run")
    assert p.returncode == 0, p.stderr[-2000:]
    assert res["virt_type"] in ("kvm", "qemu") and res["machine"]["cores"] >= 1
    b = res["benchmarks"]
    fw = b["freeze"]["sizes"][0]["freeze_window_ms"]
    assert fw["n"] == 1 and 0 < fw["median"] < 10_000
    ph = b["freeze"]["sizes"][0]["phase_ms"]
    assert 0 < ph["snapshot"]["median"] < fw["median"]  # the snapshot happens inside the window
    assert b["freeze"]["sizes"][0]["bytes_written"][0] > 64 << 20  # the 64 MiB of random data + the root disk
    vmb = b["full_backup"]["contenders"]["vmbackup"]
    assert vmb["status"] == "ok" and vmb["max_stall_ms"]["median"] >= 10  # the writer sleeps 10 ms per line
    plain = b["full_backup"]["contenders"]["vmbackup --compression none"]  # the contenders' work: no compression
    assert plain["status"] == "ok" and plain["bytes_written"]["median"] > 64 << 20
    for name in ("virtnbdbackup", "virt-backup"):
        c = b["full_backup"]["contenders"][name]
        assert c["status"] == "ok" or c["status"].startswith("not run: ")
    for m in b["copy"]["filled_qcow2"]["methods"].values():
        assert m["mb_per_s"] > 0 and m["stored_bytes"] >= 60 << 20  # random data cannot shrink
    assert b["scale"]["ns"]["100"]["planned_runs"] >= 100
    assert b["restore"].startswith("not run in smoke mode")
    inc = b["incremental"]["vmbackup"]  # a full, then an incremental after 1 % of /data1 was rewritten
    assert inc["full"]["point_type"] == "full" and inc["full"]["stored_bytes"] > 256 << 20
    written = inc["incrementals"][0]["written_bytes"]
    assert inc["incrementals"][0]["point_type"] == "incremental"
    assert written <= inc["inc_changed_bytes"]["median"] < inc["full"]["stored_bytes"] // 10
    assert written <= inc["inc_stored_bytes"]["median"] < inc["full"]["stored_bytes"] // 10
    assert inc["idle"][0]["point_type"] == "incremental" and inc["idle_overhead_s"]["median"] > 0
    vnbd = b["incremental"]["virtnbdbackup"]
    assert vnbd["status"] == "ok" or vnbd["status"].startswith("not run: ")
