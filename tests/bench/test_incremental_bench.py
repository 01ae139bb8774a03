"""The incremental benchmark's pure parts: sizes, the rewrite plan, the ratios and their verdicts, the report table.
Host-only (no VM): the real run is `python -m bench.run --smoke --only incremental` (tests/bench/test_bench_smoke.py).
"""

from __future__ import annotations

import itertools
import random

from bench import incremental as inc
from bench import report
from bench.common import GiB, MiB, summary
from bench.exceptions import BenchError


def test_size_is_16_gib_when_it_fits_else_the_largest_that_does() -> None:
    """16 GiB with 3 x size + 10 GiB free; less space picks a smaller size and says so; smoke is 256 MiB."""
    assert inc.pick_size(False, 100 * GiB) == (16 * GiB, [])
    size, notes = inc.pick_size(False, 40 * GiB)
    assert size == 8 * GiB and "8 GiB instead of 16 GiB" in notes[0]
    assert inc.pick_size(True, 1 * GiB) == (256 * MiB, [])
    try:
        inc.pick_size(False, 5 * GiB)
    except BenchError as e:
        assert "not even 1 GiB fits" in str(e)
    else:
        raise AssertionError("5 GiB free should refuse the full mode")


def test_fill_files_match_what_the_host_writes() -> None:
    """64 MiB files named fill-NNNNN.bin, the last one holding the remainder."""
    files = inc.fill_files(130 * MiB)
    assert files == [("fill-00000.bin", 64 * MiB), ("fill-00001.bin", 64 * MiB), ("fill-00002.bin", 2 * MiB)]
    assert sum(n for _, n in inc.fill_files(16 * GiB)) == 16 * GiB


def test_rewrite_runs_are_disjoint_whole_mib_inside_the_files_and_sum_exactly() -> None:
    """1 % of 16 GiB (163 MiB) as runs of 1-4 MiB that never overlap and never leave their file."""
    total = inc.rewrite_bytes(16 * GiB)
    assert total == 163 * MiB and inc.rewrite_bytes(256 * MiB) == 2 * MiB
    runs = inc.rewrite_runs(16 * GiB, total, random.Random(1))
    sizes = dict(inc.fill_files(16 * GiB))
    assert sum(r.length for r in runs) == total
    assert all(MiB <= r.length <= 4 * MiB and r.length % MiB == 0 and r.offset % MiB == 0 for r in runs)
    assert all(r.offset + r.length <= sizes[r.name] for r in runs)
    by_file: dict[str, list[inc.Run]] = {}
    for r in runs:
        by_file.setdefault(r.name, []).append(r)
    for rs in by_file.values():
        rs.sort()
        assert all(a.offset + a.length <= b.offset for a, b in itertools.pairwise(rs))
    assert len(by_file) > 10  # spread over the disk, not one file
    assert runs == inc.rewrite_runs(16 * GiB, total, random.Random(1))  # same seed, same rewrites on the twin


def test_rewrite_that_cannot_fit_is_refused() -> None:
    """More rewrite than data is an error, not a silently smaller change."""
    try:
        inc.rewrite_runs(8 * MiB, 16 * MiB, random.Random(0))
    except BenchError:
        return
    raise AssertionError("16 MiB of rewrites in 8 MiB of data should be refused")


def test_dd_command_rewrites_in_place_and_fsyncs() -> None:
    """The guest command seeks in MiB, does not truncate and fsyncs."""
    cmd = inc.Run("fill-00003.bin", 12 * MiB, 3 * MiB).dd()
    assert "of=/data1/fill-00003.bin" in cmd and "seek=12" in cmd and "count=3" in cmd
    assert "conv=notrunc,fsync" in cmd and "bs=1M" in cmd


def _vmb(full_wall: float, inc_wall: float, changed: int, stored: int, idle_wall: float) -> dict[str, object]:
    """A vmbackup result shaped like measure_vmbackup's."""
    idle = {"wall_s": idle_wall, "phase_s": {"freeze": 0.3, "snapshot": 0.2, "thaw": 0.1, "commit": 0.9, "copy": 0.4}}
    return {"full": {"wall_s": full_wall}, "incrementals": [{"written_bytes": 160 * MiB}],
            "inc_wall_s": summary([inc_wall]), "inc_changed_bytes": summary([changed]),
            "inc_stored_bytes": summary([stored]), "idle_overhead_s": summary([inc.idle_overhead(idle)])}


def test_ratios_and_verdicts() -> None:
    """Ratios from the medians; the idle overhead leaves out freeze, snapshot, thaw and commit but not the copy."""
    vmb = _vmb(100.0, 5.0, 165 * MiB, 170 * MiB, 3.0)
    vnbd = {"status": "ok", "inc_wall_s": summary([10.0]), "inc_stored_bytes": summary([160 * MiB])}
    r = inc.ratios(vmb, vnbd)
    assert r["inc_over_full_wall"] == 0.05
    assert r["stored_over_changed"] == round(170 / 165, 3)
    assert r["vmbackup_over_virtnbdbackup_inc_wall"] == 0.5
    assert r["vmbackup_over_virtnbdbackup_inc_stored"] == round(170 / 160, 3)
    assert r["idle_overhead_s"] == 1.5
    met = inc.verdicts(r)
    assert met["inc_over_full_wall"] and met["idle_overhead_s"] and met["vmbackup_over_virtnbdbackup_inc_wall"]
    assert met["vmbackup_over_virtnbdbackup_inc_stored"] is False
    missing = inc.ratios(vmb, {"status": "not run: absent"})
    assert missing["vmbackup_over_virtnbdbackup_inc_wall"] is None
    assert inc.verdicts(missing)["vmbackup_over_virtnbdbackup_inc_wall"] is None


def test_a_full_where_an_incremental_was_expected_fails_the_sample() -> None:
    """The benchmark never reports a full's numbers as an incremental's."""
    try:
        inc.expect({"point_type": "full", "full_reason": "checkpoint vmb-x missing in libvirt"}, "incremental")
    except BenchError as e:
        assert "checkpoint vmb-x missing" in str(e)
    else:
        raise AssertionError("a full point should be refused")


def test_report_table() -> None:
    """The markdown table shows both tools, the ratios with their targets, and a contender that did not run."""
    vmb = {**_vmb(100.0, 5.0, 165 * MiB, 170 * MiB, 3.0), "idle_wall_s": summary([3.0])}
    vmb["full"] = {"wall_s": 100.0, "stored_bytes": 17 * GiB}
    r = inc.ratios(vmb, {"status": "not run: absent"})
    res = {"data_bytes": 16 * GiB, "rewrite_bytes": 163 * MiB, "vmbackup": vmb,
           "virtnbdbackup": {"status": "not run: absent"}, "ratios": r, "targets": inc.TARGETS,
           "met": inc.verdicts(r), "notes": ["sequential"]}
    md = "\n".join(report.RENDER["incremental"](res))
    assert "| vmbackup | 100.0 | 17408.0 | 5.00 | 165.0 | 170.0 |" in md
    assert "| virtnbdbackup | not run: absent |" in md
    assert "| inc_over_full_wall | 0.050 | <= 0.1 | True |" in md
    assert "| vmbackup_over_virtnbdbackup_inc_wall | - | <= 1.0 | - |" in md
    assert "- sequential" in md
