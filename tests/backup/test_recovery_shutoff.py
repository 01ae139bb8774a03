"""Kill the controller at each step of a real backup, then hard power off the VM: recovery keeps every guest write.

For every fault point a `vmbackup backup` process pauses at that step (controller/backup/faults.py); where the step
is after the snapshot the guest writes and syncs a marker file (it lands in the overlay); the test SIGKILLs the
controller, destroys the VM (power loss), runs `vmbackup recover`, starts the VM and checks: it boots, its live and
saved definitions name its original files, no `.vmb-` file is left, and the marker is there with its content.

One registered lab VM of this module's own (it is powered off again and again) serves every case.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import settings as settings_mod
from controller.backup import faults
from controller.lab.sshexec import wait_for_ssh
from controller.registration.register import RegisterOptions, Registrar
from controller.virt.domain import disks
from tests.backup.helpers import cli, wait_for

pytestmark = pytest.mark.vm

AFTER_SNAPSHOT = ("after-snapshot", "mid-copy", "before-commit")


@pytest.fixture(scope="module")
def powerloss_vm(make_lab_vm: Any) -> Any:
    """A lab VM of this module (one data disk), registered for real so the backup freezes through the agent."""
    vm = make_lab_vm("powerloss", data_disks=1)
    Registrar(settings_mod.load()).register(vm.name, RegisterOptions(ssh_wait_s=120))
    return vm


@pytest.mark.parametrize("step", faults.STEPS)
def test_kill_at_step_power_off_then_recover(step: str, powerloss_vm: Any, settings: Any, tmp_path: Path) -> None:
    """SIGKILL at `step` + `virsh destroy`; after `vmbackup recover` the VM boots on its files with its writes."""
    vm = powerloss_vm
    dom = libvirt.open(settings.uri).lookupByName(vm.name)
    originals = [d.path for d in disks(dom)]
    marker = tmp_path / f"fault-{step}"
    proc = cli("backup", vm.name, "--json", env={"VMBACKUP_FAULT_PAUSE_AT": step, "VMBACKUP_FAULT_FILE": str(marker)})
    wait_for(marker, proc, timeout=240)
    token = secrets.token_hex(8)
    if step in AFTER_SNAPSHOT:
        assert any(".vmb-" in d.path for d in disks(dom)), "the VM must be on the overlays at this step"
        rc, _, err = vm.ssh(f"echo {token} > /data1/after-{step} && echo {token} > /root/after-{step} && sync", 60)
        assert rc == 0, err
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dom.destroy()  # power loss before any recovery ran

    rec = cli("recover", "--json")
    out, err = rec.communicate(timeout=600)
    assert rec.returncode == 0, err
    report = json.loads(out)
    assert not report.get("errors"), report
    if step in AFTER_SNAPSHOT:
        assert report["committed"], report  # the overlays were merged offline

    inactive = [d.path for d in disks(dom, inactive=True)]
    assert inactive == originals, f"after {step} the saved definition must name the original files"
    for p in originals:
        assert [f for f in os.listdir(os.path.dirname(p)) if ".vmb-" in f] == []
    t0 = time.monotonic()
    dom.create()
    wait_for_ssh(vm.meta, timeout=240)
    print(f"{step}: rebooted in {time.monotonic() - t0:.0f}s")
    assert [d.path for d in disks(dom)] == originals
    if step in AFTER_SNAPSHOT:
        for path in (f"/data1/after-{step}", f"/root/after-{step}"):
            rc, got, err = vm.ssh(f"cat {path}", 60)
            assert rc == 0 and got.strip() == token, f"{path} written after the snapshot was lost: {err}"
