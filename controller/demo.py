"""`make demo`: the furthest end-to-end story, on embedded defaults, narrated step by step.

    lab image -> lab VM (2 data disks) -> register (agent over SSH, mTLS) -> write a marker in the guest ->
    back up (a full) -> the guest writes 16 MiB -> back up again (an incremental: only the changed blocks) ->
    verify the vault -> restore the incremental point as a new VM -> boot-check it -> clean up

Every step is the real CLI (`vmbackup ...`), so the log shows exactly what a user would type. State goes to
$VMBACKUP_HOME (default /var/lib/vmbackup); the demo VMs are removed at the end,
the vault and the job history are kept so `vmbackup points` and `vmbackup jobs` show what happened.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Any

VM = os.environ.get("VMBACKUP_DEMO_VM", "demo-vm")
RESTORED = f"{VM}-restored"


def step(title: str) -> None:
    """Print a step banner."""
    print(f"\n=== {title}", flush=True)


def vmbackup(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the vmbackup CLI as a user would, echoing the command."""
    cmd = [sys.executable, "-m", "controller.cli.main", *args]
    print(f"$ vmbackup {shlex.join(args)}", flush=True)
    res = subprocess.run(cmd, text=True, capture_output=capture)
    if capture and res.stdout:
        print(res.stdout, end="")
    if check and res.returncode != 0:
        if capture and res.stderr:
            print(res.stderr, end="", file=sys.stderr)
        raise SystemExit(f"demo: `vmbackup {shlex.join(args)}` failed with exit code {res.returncode}")
    return res


def main() -> int:
    """Run the story; always remove the demo VMs."""
    t0 = time.monotonic()
    try:
        step("1. lab image (cached after the first build)")
        vmbackup("lab", "image")
        step("2. a lab VM with two data disks")
        vmbackup("lab", "destroy", VM, check=False, capture=True)
        vmbackup("lab", "create", VM, "--data-disks", "2")
        step("3. discover the VMs of this host")
        vmbackup("discover")
        step("4. register: install the agent over SSH, issue its certificate, call it over mTLS")
        vmbackup("register", VM)
        step("5. back up the running VM (freeze -> snapshot -> thaw -> copy -> commit)")
        vmbackup("lab", "ssh", VM, "--", "sh", "-c", "echo demo-marker > /data1/marker && sync")
        vmbackup("backup", VM)
        step("6. the guest writes 16 MiB; the next backup is an incremental (only the changed blocks)")
        vmbackup("lab", "ssh", VM, "--", "sh", "-c",
                 "dd if=/dev/urandom of=/data1/demo-16m bs=1M count=16 conv=fsync status=none && sync")
        vmbackup("backup", VM)
        vmbackup("points", VM)
        for p in reversed(_points()[:2]):
            print(point_line(p))
        step("7. verify the vault")
        vmbackup("vault", "verify")
        step("8. restore the incremental point (its chain: the full + the changes) as a new VM")
        point = _latest_point()
        vmbackup("restore", point, "--as", RESTORED, "--start")
        vmbackup("lab", "ssh", RESTORED, "--", "cat", "/data1/marker")  # the marker written before the backup
        step("9. boot-check the point in an isolated VM")
        vmbackup("boot-check", point)
        vmbackup("points", VM)
        step("10. jobs of this run")
        vmbackup("jobs", "--since", "2h")
    finally:
        step("cleanup: demo VMs removed (the vault and job history stay)")
        for name in (RESTORED, VM):
            vmbackup("lab", "destroy", name, check=False, capture=True)
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


def _latest_point() -> str:
    """The newest recovery point of the demo VM."""
    return str(_points()[0]["point_id"])


def _points() -> list[dict[str, Any]]:
    """The demo VM's points, newest first (`vmbackup points VM --json`, not echoed)."""
    import json

    res = subprocess.run([sys.executable, "-m", "controller.cli.main", "points", VM, "--json"], text=True,
                         capture_output=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"demo: `vmbackup points {VM} --json` failed: {res.stderr.strip()}")
    points: list[dict[str, Any]] = json.loads(res.stdout)
    return points


def point_line(p: dict[str, Any]) -> str:
    """One short line: the point's type, the bytes changed since its parent, and what it stores in the vault."""
    changed = p.get("changed_bytes")
    what = "every allocated byte" if changed is None else f"{changed / 2**20:.1f} MiB changed since {p.get('parent')}"
    return f"{p['point_id']}: {p.get('type', 'full')}, {what}, {p['stored_bytes'] / 2**20:.1f} MiB stored"


if __name__ == "__main__":
    sys.exit(main())
