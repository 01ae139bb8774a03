"""The backup engine against a real, registered, running lab VM (TCG): data, consistency levels, no leftovers.

These share the session's registered lab VM (2 data disks). Order matters only at the end: the shut-off test
stops the VM and starts it again so later modules still find it running.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.engine import BackupEngine, BackupRequest
from controller.cli.main import main
from controller.jobs.store import JobStore
from controller.lab.sshexec import wait_for_ssh
from controller.restore import fsck
from controller.vault.vault import Vault
from controller.virt.domain import disks

pytestmark = pytest.mark.vm

HOOK_DIR = "/etc/vmbackup-agent/hooks.d"


def domain(settings: Any, name: str) -> libvirt.virDomain:
    """The libvirt domain of a lab VM."""
    return libvirt.open(settings.uri).lookupByName(name)


def disk_paths(settings: Any, name: str) -> list[str]:
    """The files a domain runs on, in target order."""
    return [d.path for d in disks(domain(settings, name))]


def overlays_beside(paths: list[str]) -> list[str]:
    """Any vmbackup overlay next to these disks."""
    found: list[str] = []
    for p in paths:
        found += glob.glob(os.path.join(os.path.dirname(p), "*.vmb-*.qcow2"))
    return found


def ssh_ok(vm: Any, cmd: str, timeout: float = 60) -> str:
    """Run a guest command that must succeed; return its stdout."""
    rc, out, err = vm.ssh(cmd, timeout=timeout)
    assert rc == 0, f"{cmd!r} failed ({rc}): {err}"
    return out


def read_file_from_image(image: Path, fmt: str, inner_path: str, tmp: Path) -> str:
    """Read one file out of a whole-disk ext4 image with debugfs (no mount, no guest)."""
    raw = tmp / (image.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(raw)], check=True)
    out = subprocess.run(["debugfs", "-R", f"cat {inner_path}", str(raw)], capture_output=True, text=True)
    raw.unlink()
    return out.stdout


def test_backup_while_guest_writes(
    registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running VM, continuous writer: verified point, clean filesystems, pre-freeze data present, VM on its files;
    the point records the guest's own FIFREEZE -> FITHAW time beside the controller's window, and `points` shows it."""
    marker = f"before-freeze-{time.time_ns()}"
    ssh_ok(lab_vm, f"echo {marker} > /data1/marker && sync")
    ssh_ok(lab_vm, "nohup sh -c 'i=0; while :; do echo $i >> /data2/stream; i=$((i+1)); sleep 0.01; done' "
                   ">/dev/null 2>&1 & echo $! > /run/writer.pid")
    before = disk_paths(settings, lab_vm.name)
    try:
        r = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
        grown_from = int(ssh_ok(lab_vm, "wc -l < /data2/stream"))
        time.sleep(1)
        assert int(ssh_ok(lab_vm, "wc -l < /data2/stream")) > grown_from, "the guest writer stalled after the backup"
    finally:
        lab_vm.ssh("kill $(cat /run/writer.pid)")
    print(f"\nbackup: freeze window {r.freeze_window_ms} ms, {r.bytes_copied / 2**20:.0f} MiB stored, "
          f"{r.duration_s:.1f} s end to end")
    assert r.consistency == "FILE_SYSTEM", r.consistency_reason
    assert r.freeze_window_ms is not None and 0 < r.freeze_window_ms < 10_000
    assert disk_paths(settings, lab_vm.name) == before, "the VM must end on its original disk files"
    assert overlays_beside(before) == []

    vault = Vault(settings.vault)
    point = vault.get_point(r.point_id)
    result = vault.verify(point)
    assert result.ok, result.to_dict()
    assert [d.target for d in point.manifest.disks] == ["vda", "vdb", "vdc"]
    for rec in point.manifest.disks:
        checks = fsck.check_image(vault.disk_path(point, rec), rec.format, rec.target, tmp_path)
        assert checks, f"no filesystem found on {rec.target}"
        assert all(c.status == "clean" for c in checks), [vars(c) for c in checks]
    vdb = point.manifest.disk("vdb")
    assert vdb is not None
    copied = read_file_from_image(vault.disk_path(point, vdb), vdb.format, "/marker", tmp_path)
    assert copied.strip() == marker

    job = JobStore.open(settings.db_path).get(r.job_id)
    assert job.state == "completed"
    assert {"freeze", "snapshot", "thaw", "copy", "commit"} <= {p.name for p in job.phases}
    assert job.bytes_total > 0

    # plausible: the guest froze within Freeze call -> Thaw reply (the controller's window + the Freeze RPC)
    guest, window = point.manifest.guest_frozen_ms, point.manifest.freeze_window_ms
    rpc = job.details["freeze_rpc_ms"]
    print(f"guest frozen {guest} ms (FIFREEZE -> FITHAW), controller window {window} ms, Freeze RPC {rpc} ms, "
          f"hooks {job.details['freeze_hooks_ms']}/{job.details['thaw_hooks_ms']} ms")
    assert guest is not None and window is not None and window == r.freeze_window_ms
    assert 0 < guest <= window + rpc
    assert job.details["guest_frozen_ms"] == guest and point.manifest.freeze_hooks_ms == 0
    printed = capsys.readouterr().out
    assert main(["points", lab_vm.name, "--json"]) == 0
    shown = {row["point_id"]: row for row in json.loads(capsys.readouterr().out)}
    with capsys.disabled():
        print(printed, end="")  # the timings above, for the run's log
    assert shown[r.point_id]["guest_frozen_ms"] == guest


def test_application_consistent_with_hook(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """A succeeding freeze hook makes the point APPLICATION; the hook saw freeze then thaw."""
    hook = f"{HOOK_DIR}/10-test-app"
    ssh_ok(lab_vm, f"mkdir -p {HOOK_DIR} && printf '#!/bin/sh\\necho \"$1\" >> /run/hook.log\\n' > {hook} "
                   f"&& chmod 0755 {hook} && rm -f /run/hook.log")
    try:
        r = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
        log = ssh_ok(lab_vm, "cat /run/hook.log").split()
    finally:
        lab_vm.ssh(f"rm -f {hook}")
    assert r.consistency == "APPLICATION", r.consistency_reason
    assert log == ["freeze", "thaw"]


def test_failing_hook_is_file_system_with_warning(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """A failing hook never upgrades to APPLICATION: FILE_SYSTEM, and the job says which hook failed."""
    hook = f"{HOOK_DIR}/20-test-fails"
    ssh_ok(lab_vm, f"mkdir -p {HOOK_DIR} && printf '#!/bin/sh\\nexit 3\\n' > {hook} && chmod 0755 {hook}")
    try:
        r = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    finally:
        lab_vm.ssh(f"rm -f {hook}")
    assert r.consistency == "FILE_SYSTEM"
    assert any("20-test-fails" in w for w in r.warnings), r.warnings


def test_crash_consistent_when_agent_is_down(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """Agent stopped: the backup still runs, marked CRASH with the reason, and the job warns."""
    ssh_ok(lab_vm, "systemctl stop vmbackup-agent")
    try:
        r = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    finally:
        ssh_ok(lab_vm, "systemctl start vmbackup-agent")
    assert r.consistency == "CRASH"
    assert "freeze failed" in r.consistency_reason
    job = JobStore.open(settings.db_path).get(r.job_id)
    assert job.state == "completed"
    assert any("crash-consistent" in w for w in job.details.get("warnings", [])), job.details
    assert Vault(settings.vault).verify(Vault(settings.vault).get_point(r.point_id)).ok


def test_shut_off_vm_is_copied_crash_consistent(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """A shut-off VM is copied directly and recorded CRASH; the VM is started again afterwards."""
    dom = domain(settings, lab_vm.name)
    dom.shutdown()
    deadline = time.monotonic() + 120
    while dom.isActive() and time.monotonic() < deadline:
        time.sleep(1)
    if dom.isActive():
        dom.destroy()
    try:
        r = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    finally:
        dom.create()
        wait_for_ssh(lab_vm.meta, timeout=240)
    assert r.consistency == "CRASH"
    assert "shutoff" in r.consistency_reason
    assert r.freeze_window_ms is None
    assert Vault(settings.vault).verify(Vault(settings.vault).get_point(r.point_id)).ok
