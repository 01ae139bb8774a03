"""`vmbackup serve` and `vmbackup job cancel` against the shared registered lab VM (real libvirt, agent, FIFREEZE).

1. A real scheduled run: the VM is protected by an ``every_minutes: 1`` policy, ``vmbackup serve`` runs as its
   own process and takes a real backup at the next minute slot; SIGTERM then stops it with exit 0.
2. Cancel of a running backup from another process: serve (``--once``, started once a minute slot has passed
   since the VM's last backup job, so one backup is due at start) copies at a paced rate (policy
   ``bandwidth_mbps``); when the job is in phase ``copy`` the test runs ``vmbackup job cancel ID``. The job
   must end ``cancelled`` with the VM on its original disk files, no ``*.vmb-*`` overlay and no ``.tmp-*``
   directory in the vault.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import db
from controller.jobs.store import Job, JobStore
from controller.policies.parse import parse_text, to_yaml
from controller.policies.store import bind, remove_protection, save_policy
from controller.scheduling.schedule import next_run
from controller.vault import Vault
from controller.virt.domain import disks

pytestmark = pytest.mark.vm

CLI = [sys.executable, "-m", "controller.cli.main"]


def disk_paths(settings: Any, name: str) -> list[str]:
    """The files the domain runs on, in target order."""
    conn = libvirt.open(settings.uri)
    try:
        return [d.path for d in disks(conn.lookupByName(name))]
    finally:
        conn.close()


def overlays(paths: list[str]) -> list[str]:
    """vmbackup overlays beside these disk files."""
    return sorted({o for p in paths for o in glob.glob(os.path.join(os.path.dirname(p), "*.vmb-*"))})


def protect(settings: Any, vm_uuid: str, name: str, policy_yaml: str, since: datetime | None = None) -> None:
    """Save the policy and bind the VM to it (optionally dating the protection back)."""
    conn = db.connect(settings.db_path)
    pol = parse_text(policy_yaml)[0]
    save_policy(conn, pol, to_yaml(pol), replace=True)
    bind(conn, vm_uuid, name, pol.name)
    if since is not None:
        conn.execute("UPDATE protections SET since = ? WHERE vm_uuid = ?", (since.isoformat(), vm_uuid))
    conn.close()


def unprotect(settings: Any, vm_uuid: str) -> None:
    """Remove the binding so other tests' serve runs do not pick the VM up."""
    conn = db.connect(settings.db_path)
    remove_protection(conn, vm_uuid)
    conn.close()


def start_serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`vmbackup serve ARGS` as a separate process, stderr to a log file."""
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*CLI, "serve", *args], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    return proc, log


def backups_since(settings: Any, vm_uuid: str, t0: str) -> list[Job]:
    """Backup jobs of the VM created after t0, newest first."""
    return [j for j in JobStore.open(settings.db_path).list(type="backup", vm=vm_uuid) if j.created_at > t0]


def wait_for_slot(settings: Any, vm_uuid: str, policy_yaml: str) -> None:
    """Sleep until a slot of the policy has passed since the VM's newest backup job (e.g. the previous test's)."""
    jobs = JobStore.open(settings.db_path).list(type="backup", vm=vm_uuid, limit=1)
    if not jobs:
        return
    slot = next_run(parse_text(policy_yaml)[0].schedule, datetime.fromisoformat(jobs[0].created_at))
    time.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds() + 1))


def stop(proc: subprocess.Popen[bytes], timeout: float = 180) -> int:
    """SIGTERM and wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def test_scheduled_every_minute_backup(registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path) -> None:
    """serve runs the every-minute policy's slot: a real recovery point made by serve's job; SIGTERM exits 0."""
    uuid = registered_vm.registration.vm_uuid
    before = disk_paths(settings, lab_vm.name)
    t0 = datetime.now(UTC).isoformat(timespec="microseconds")
    protect(settings, uuid, lab_vm.name, "name: serve-every1\nschedule: {every_minutes: 1}\n")
    proc, log = start_serve(tmp_path, "--tick", "2", "--grace", "5", "--prune-every", "0s", "--verify-every", "0s")
    try:
        deadline = time.monotonic() + 300
        done: list[Job] = []
        while time.monotonic() < deadline and proc.poll() is None:
            done = [j for j in backups_since(settings, uuid, t0) if not j.active]
            if done:
                break
            time.sleep(2)
        assert done, f"no scheduled backup within 300 s; serve log:\n{log.read_text()}"
    finally:
        unprotect(settings, uuid)
        rc = stop(proc)
    text = log.read_text()
    print(f"\nserve log:\n{text}")
    job = done[-1]
    assert job.state == "completed", f"{job.state} {job.error}\n{text}"
    assert job.owner_pid == proc.pid, "the backup was not run by the serve process"
    points = [p for p in Vault(settings.vault).list_points(uuid) if p.manifest.job_id == job.id]
    assert len(points) == 1 and points[0].manifest.policy == "serve-every1"
    assert Vault(settings.vault).verify(points[0]).ok
    started = datetime.fromisoformat(job.created_at)
    assert started.second < 30, f"job created at {job.created_at}: not at a minute slot"
    assert rc == 0, text
    assert "start backup" in text and "completed backup" in text and "stop: done" in text
    assert disk_paths(settings, lab_vm.name) == before and overlays(before) == []


def test_cancel_running_backup_restores_vm(registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path) -> None:
    """`vmbackup job cancel` during copy: job cancelled, VM on its original disks, no overlay, no partial point."""
    uuid = registered_vm.registration.vm_uuid
    before = disk_paths(settings, lab_vm.name)
    points_before = {p.point_id for p in Vault(settings.vault).list_points(uuid)}
    t0 = datetime.now(UTC).isoformat(timespec="microseconds")
    # every backup a full (an incremental of an idle VM ends before it can be cancelled), paced to last seconds
    slow = "name: serve-slow\nschedule: {every_minutes: 1}\nfull_every: 1\nlimits: {bandwidth_mbps: 40}\n"
    protect(settings, uuid, lab_vm.name, slow, since=datetime.now(UTC) - timedelta(hours=2))
    wait_for_slot(settings, uuid, slow)
    proc, log = start_serve(tmp_path, "--once", "--prune-every", "0s", "--verify-every", "0s")
    try:
        job = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            jobs = backups_since(settings, uuid, t0)
            if jobs and any(p.name == "copy" and p.state == "running" for p in jobs[0].phases):
                job = jobs[0]
                break
            time.sleep(0.2)
        assert job is not None, f"the backup never reached phase copy; serve log:\n{log.read_text()}"
        time.sleep(1.0)  # well inside the copy
        t_cancel = time.monotonic()
        out = subprocess.run([*CLI, "job", "cancel", job.id], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rc = proc.wait(240)
        t_end = time.monotonic()
    finally:
        unprotect(settings, uuid)
        if proc.poll() is None:
            stop(proc)
    text = log.read_text()
    print(f"\ncancel -> serve exit {t_end - t_cancel:.1f} s; serve log:\n{text}")
    final = JobStore.open(settings.db_path).get(job.id)
    assert final.state == "cancelled", f"{final.state} {final.error}\n{text}"
    assert final.error and final.error["code"] == "JOB_CANCELLED"
    assert {p.name: p.state for p in final.phases}["copy"] == "cancelled"
    assert rc == 0, text
    assert disk_paths(settings, lab_vm.name) == before, "the VM is not back on its original disks"
    assert overlays(before) == [], "overlay files left behind"
    vm_dir = Path(settings.vault) / uuid
    assert not list(vm_dir.glob(".tmp-*")), "partial point left in the vault"
    assert {p.point_id for p in Vault(settings.vault).list_points(uuid)} == points_before
    rc_ssh, _, err = lab_vm.ssh("touch /data1/after-cancel && sync && rm /data1/after-cancel")
    assert rc_ssh == 0, f"guest filesystems not writable after cancel (still frozen?): {err}"
