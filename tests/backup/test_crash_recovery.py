"""Kill the controller (SIGKILL) at each step of a real backup and prove the next start puts everything back.

For every fault point the backup runs in its own `vmbackup backup` process that pauses at that step (see
controller/backup/faults.py); the test kills it there, runs `vmbackup recover`, and checks: the VM runs on its
original files, no overlay is left, no partial recovery point remains, the guest is not frozen, and the job is
failed with CONTROLLER_RESTARTED. The killed backup is an incremental (a clean backup right before it gives it a
parent with a checkpoint); after recovery the next backup is a full that says why, and the chain goes on from it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup import cbt, faults
from controller.backup.engine import BackupEngine, BackupRequest
from controller.jobs.store import JobStore
from controller.virt.domain import disks
from tests.backup.helpers import cli, wait_for

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("step", faults.STEPS)
def test_kill_at_step_then_recover(step: str, registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path) -> None:
    """SIGKILL at `step`; `vmbackup recover` leaves the VM on its files with no overlay, point or freeze behind."""
    dom = libvirt.open(settings.uri).lookupByName(lab_vm.name)
    before = [d.path for d in disks(dom)]
    BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))  # a parent with a checkpoint for the killed one
    marker = tmp_path / f"fault-{step}"
    proc = cli("backup", lab_vm.name, "--json",
               env={"VMBACKUP_FAULT_PAUSE_AT": step, "VMBACKUP_FAULT_FILE": str(marker)})
    wait_for(marker, proc, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    rec = cli("recover", "--json")
    out, err = rec.communicate(timeout=600)
    assert rec.returncode == 0, err
    report = json.loads(out)

    assert [d.path for d in disks(dom)] == before, f"after recovery from {step} the VM must run on its own files"
    for p in before:
        leftovers = [f for f in os.listdir(os.path.dirname(p)) if ".vmb-" in f]
        assert leftovers == [], leftovers
    vm_vault = settings.vault / lab_vm.uuid
    if vm_vault.exists():
        assert [e for e in os.listdir(vm_vault) if e.startswith(".tmp-")] == []
    if step in ("after-snapshot", "mid-copy", "before-commit"):
        assert report["committed"], report  # the overlays really existed and were merged back
    rc, _, _ = lab_vm.ssh("echo after-recovery > /data1/after && sync", timeout=60)
    assert rc == 0, "the guest must not be left frozen"
    jobs = JobStore.open(settings.db_path).list(type="backup", vm=lab_vm.uuid, limit=1)
    assert jobs[0].state == "failed", jobs[0].to_dict()
    assert (jobs[0].error or {}).get("code") == "CONTROLLER_RESTARTED", jobs[0].to_dict()
    assert jobs[0].details["chain"]["parent"], jobs[0].details  # the killed backup was an incremental
    assert cbt.ours(dom) == [], "recovery resets the chain: no checkpoint of the killed job (or older) is left"

    after = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    assert after.point_type == "full" and "did not finish" in (after.full_reason or ""), after
    assert cbt.ours(dom) == [cbt.checkpoint_name(after.job_id)]
