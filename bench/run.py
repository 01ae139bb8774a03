"""`python -m bench.run [--smoke] [--only NAME] [--out DIR]`: run the benchmarks, write latest.json + latest.md.

VM work takes the machine-wide lock /tmp/vmbackup-vm.lock itself (do not wrap this in `flock` on that file).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    compression,
    contenders,
    copyspeed,
    freeze,
    hostinfo,
    incremental,
    qga_freeze,
    report,
    restore_boot,
    scale,
)
from bench.env import Plan, make_plan, setup_home
from bench.guest import boot_vm, destroy_vm, register
from controller.settings import Settings

NAMES = ("freeze", "copy", "full_backup", "restore", "scale", "incremental", "qga", "compression")
VM_NAMES = {"freeze", "full_backup", "restore"}  # share one registered VM (vm_benchmarks)
VM_LOCK = Path("/tmp/vmbackup-vm.lock")
CACHE_STATE = ("page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every measured backup, copy, "
               "restore and boot, for every contender alike; the lab base image is shared by all VMs")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition, one VM (CI)")
    p.add_argument("--only", action="append", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--keep-home", action="store_true", help="keep the private VMBACKUP_HOME for inspection")
    return p.parse_args(argv)


@contextlib.contextmanager
def vm_lock() -> Iterator[None]:
    """The machine-wide VM lock, so benchmark VMs never compete with test VMs for the 2 cores."""
    with open(VM_LOCK, "a") as f:
        print(f"waiting for {VM_LOCK} ...", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def guarded(res: dict[str, Any], name: str, fn: Any, *args: Any) -> Any:
    """Run one benchmark; a failure is recorded as 'failed: ...' in the results and the run goes on."""
    print(f"== {name}", flush=True)
    t0 = time.monotonic()
    try:
        out = fn(*args)
    except Exception as e:  # recorded in the results; the other benchmarks still run
        traceback.print_exc()
        res["benchmarks"][name] = f"failed: {e}"
        return None
    res["elapsed_s"][name] = round(res["elapsed_s"].get(name, 0) + time.monotonic() - t0, 1)
    if res.get("_out"):  # write as we go: an interrupted run still leaves what it measured
        report.write({k: v for k, v in res.items() if k != "_out"}, res["_out"])
    return out


def vm_benchmarks(res: dict[str, Any], s: Settings, plan: Plan, want: set[str], work: Path) -> None:
    """One registered VM: freeze at the first size, full_backup, restore, then freeze at the other sizes."""
    vm = boot_vm(s, f"b{os.getpid()}-bench", plan.freeze_sizes[0])
    sizes: list[dict[str, Any]] = []
    try:
        register(s, vm)
        print(f"  VM up in {vm.boot_seconds:.0f} s, registered in {vm.register_seconds:.0f} s", flush=True)
        if "freeze" in want:
            out = guarded(res, "freeze", freeze.measure_size, s, vm, plan.freeze_reps)
            sizes += [out] if out else []
            if sizes:  # recorded now, so an interrupted run still has the sizes it measured
                res["benchmarks"]["freeze"] = freeze.result(sizes, vm)
        if "full_backup" in want:
            out = guarded(res, "full_backup", contenders.run_bench, s, vm, plan.backup_reps, work / "contenders")
            if out:
                res["benchmarks"]["full_backup"] = out
        if "restore" in want and plan.restore_reps == 0:
            msg = "not run in smoke mode: it boots a second VM per repetition (run `make bench`)"
            print(f"== restore: {msg}")
            res["benchmarks"]["restore"] = msg
        elif "restore" in want:
            out = guarded(res, "restore", restore_boot.run_bench, s, vm, plan.restore_reps)
            if out:
                res["benchmarks"]["restore"] = out
        if "freeze" in want:
            for size in plan.freeze_sizes[1:]:
                out = guarded(res, "freeze", freeze.measure_size, s, vm, plan.freeze_reps, size)
                sizes += [out] if out else []
                if sizes:
                    res["benchmarks"]["freeze"] = freeze.result(sizes, vm)
    finally:
        destroy_vm(s, vm.name)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so the VM is destroyed and the results so far are written."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the results."""
    a = parse(argv)
    want = set(a.only or NAMES)
    s = setup_home()
    work = s.home / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    plan = make_plan(a.smoke, shutil.disk_usage(s.home).free)
    res: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": a.smoke,
        "machine": hostinfo.machine(),
        "versions": hostinfo.versions(),
        "virt_type": hostinfo.virt_type(s.virt_type),
        "cache_state": CACHE_STATE,
        "plan": {k: v for k, v in vars(plan).items() if k != "notes"},
        "notes": list(plan.notes),
        "benchmarks": {},
        "elapsed_s": {},
    }
    res["_out"] = a.out
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    try:
        if "copy" in want:
            out = guarded(res, "copy", copyspeed.run_bench, plan, work / "copy")
            if out:
                res["benchmarks"]["copy"] = out
        if "scale" in want:
            out = guarded(res, "scale", scale.run_bench, plan.scale_ns, plan.scale_reps, work / "scale")
            if out:
                res["benchmarks"]["scale"] = out
        if "compression" in want:  # host-only: the vault writer on the lab image and on random data
            out = guarded(res, "compression", compression.run_bench, s, plan, work / "compression")
            if out:
                res["benchmarks"]["compression"] = out
        if want & (VM_NAMES | {"incremental", "qga"}):
            with vm_lock():
                if want & VM_NAMES:
                    vm_benchmarks(res, s, plan, want, work)
                if "incremental" in want:  # its own two VMs, one after the other
                    out = guarded(res, "incremental", incremental.run_bench, s, a.smoke,
                                  shutil.disk_usage(s.home).free, work / "incremental")
                    if out:
                        res["benchmarks"]["incremental"] = out
                if "qga" in want and plan.smoke:
                    res["benchmarks"]["qga"] = "not run in smoke mode: it boots and registers its own VM"
                elif "qga" in want:  # its own VM: the vmbackup agent and qemu-guest-agent alternating
                    out = guarded(res, "qga", qga_freeze.run_bench, s, plan.freeze_reps, plan.freeze_sizes[0])
                    if out:
                        res["benchmarks"]["qga"] = out
    finally:
        res.pop("_out", None)
        exc = sys.exc_info()[1]
        if exc is not None:
            res["notes"].append(f"run interrupted ({type(exc).__name__}: {exc}); missing benchmarks did not finish")
        res["elapsed_s"]["total"] = round(time.monotonic() - t0, 1)
        res["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        j, md = report.write(res, a.out)
        print(f"wrote {j} and {md}")
        if not a.keep_home:
            shutil.rmtree(s.home, ignore_errors=True)
    failed = [k for k, v in res["benchmarks"].items() if isinstance(v, str) and v.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
