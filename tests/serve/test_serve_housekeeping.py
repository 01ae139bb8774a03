"""serve's housekeeping on a real vault (verify job, prune pass) and the `vmbackup serve` process itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.jobs.store import JobStore
from controller.scheduling.housekeeping import prune_pass, verify_vault
from controller.vault import Vault, new_point_id
from controller.vault.exceptions import PointCorrupt

CLI = [sys.executable, "-m", "controller.cli.main"]


def make_point(cfg: Any, tmp: Path, vm_uuid: str, created: datetime) -> str:
    """A real published point with a small raw disk."""
    src = tmp / "d.raw"
    src.write_bytes(b"\x05" * 65536)
    with Vault(cfg.vault).new_point(vm_uuid, new_point_id(created)) as w:
        w.copy_disk("vda", src, fmt="raw")
        w.write_domain_xml(f"<domain><uuid>{vm_uuid}</uuid></domain>")
        p = w.publish({"vm": {"uuid": vm_uuid, "name": "web1", "host": "qemu:///system"}, "consistency": "CRASH",
                       "created": created.isoformat(timespec="seconds")})
    return p.point_id


def test_verify_job_finds_a_corrupt_point(private_settings: Any, conn: Any, tmp_path: Path) -> None:
    """A clean vault verifies as a completed job; one flipped byte makes the job fail POINT_CORRUPT naming it."""
    vm = "6c1e1d0e-8a43-4a4b-9b1f-0b9a3f1c2d11"
    now = datetime.now(UTC)
    good = make_point(private_settings, tmp_path, vm, now - timedelta(hours=2))
    bad = make_point(private_settings, tmp_path, vm, now - timedelta(hours=1))
    job_id, _, text = verify_vault(private_settings)
    assert JobStore(conn).get(str(job_id)).state == "completed" and text.startswith("2 point")
    disk = Vault(private_settings.vault).get_point(bad).path / "disks" / "vda.raw"
    data = bytearray(disk.read_bytes())
    data[100] ^= 0xFF
    disk.write_bytes(bytes(data))
    with pytest.raises(PointCorrupt) as e:
        verify_vault(private_settings)
    assert bad in e.value.message and good not in e.value.message
    last = JobStore(conn).list(type="verify")[0]
    assert last.state == "failed" and last.error and last.error["code"] == "POINT_CORRUPT"


def test_prune_pass_applies_retention(private_settings: Any, policy: Any, protect: Any, tmp_path: Path) -> None:
    """keep_last 1: the prune pass deletes the older points of a protected VM, keeps the newest."""
    policy("name: keep1\nschedule: {every_minutes: 1}\nretention: {keep_last: 1}\n")
    reg = protect("web1", "keep1")
    now = datetime.now(UTC)
    ids = [make_point(private_settings, tmp_path, reg.vm_uuid, now - timedelta(hours=h)) for h in (3, 2, 1)]
    _, _, text = prune_pass(private_settings, [reg.vm_uuid])
    assert text.startswith("deleted 2 point")
    assert [p.point_id for p in Vault(private_settings.vault).list_points(reg.vm_uuid)] == [ids[-1]]


def test_serve_process_sigterm_exits_zero_and_refuses_second(private_settings: Any, conn: Any) -> None:
    """`vmbackup serve` starts (recovery, verify of an empty vault), a second one is refused, SIGTERM -> exit 0."""
    proc = subprocess.Popen([*CLI, "serve", "--tick", "0.5", "--prune-every", "0s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not JobStore(conn).list(type="verify"):
            time.sleep(0.2)
        second = subprocess.run([*CLI, "serve", "--once"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "SERVE_ALREADY_RUNNING" in second.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "start: recovery" in err and "completed verify" in err and "stop: done" in err
    assert JobStore(conn).list(type="verify")[0].state == "completed"


def test_verify_job_reports_unloadable_points_and_checks_the_rest(
    private_settings: Any, conn: Any, tmp_path: Path
) -> None:
    """A tampered manifest and a symlinked VM directory fail the job by name; the good point is still verified."""
    vm, other = "6c1e1d0e-8a43-4a4b-9b1f-0b9a3f1c2d12", "6c1e1d0e-8a43-4a4b-9b1f-0b9a3f1c2d13"
    now = datetime.now(UTC)
    good = make_point(private_settings, tmp_path, vm, now - timedelta(hours=2))
    crafted = make_point(private_settings, tmp_path, vm, now - timedelta(hours=1))
    mf = Vault(private_settings.vault).get_point(crafted).path / "manifest.json"
    mf.write_text(mf.read_text().replace(crafted, good))  # a manifest claiming its neighbour's id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (Path(private_settings.vault) / other).symlink_to(elsewhere)  # a VM directory that escapes the vault
    with pytest.raises(PointCorrupt) as e:
        verify_vault(private_settings)
    bad = e.value.details["bad"]
    assert crafted in e.value.message, bad
    assert any(b.get("vm_uuid") == other for b in bad), bad
    assert good not in [b.get("point_id") for b in bad]
    assert Vault(private_settings.vault).get_point(good).manifest.verify["ok"] is True  # still checked and recorded
