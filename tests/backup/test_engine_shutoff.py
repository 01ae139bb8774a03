"""The engine's own paths when the guest shuts off mid-backup: the commit and the undo merge the overlay offline.

A running OS-less domain (tiny, see test_overlay_safety) is backed up CRASH-consistently (its registration points
at no agent, so the freeze falls back); mid-copy the domain is destroyed and "its" writes since the snapshot are
put into the overlay with qemu-io. The backup then either finishes (commit path) or is cancelled (undo path);
both must leave the saved definition on the original file with the writes merged in and no overlay behind.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from controller import db
from controller.backup.engine import BackupEngine, BackupRequest
from controller.backup.intent import IntentStore
from controller.jobs.store import JobStore
from controller.virt.domain import disks
from tests.backup.helpers import qemu_io
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm


def _shut_off_mid_copy(settings: Any, t: Any, monkeypatch: pytest.MonkeyPatch, cancel: bool) -> dict[str, Any]:
    """Run a backup of running `t`; mid-copy destroy it, write into its overlay, optionally cancel the job."""
    qemu_io(t.base, "write -P 0x11 0 8M")
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    monkeypatch.setenv("VMBACKUP_FAULT_COPY_DELAY_S", "1.0")
    copying = threading.Event()
    eng = BackupEngine(settings, progress=lambda _t, done, _total: copying.set() if done else None)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = eng.run(BackupRequest(vm=t.name, freeze_timeout_s=2.0))
        except BaseException as e:
            out["error"] = e

    th = threading.Thread(target=run)
    th.start()
    assert copying.wait(90), "the copy never started"
    ovl = next(d.path for d in disks(t.dom) if d.target == "vda")
    assert ".vmb-" in ovl
    t.dom.destroy()  # the guest goes away mid-backup
    w = qemu_io(ovl, "write -P 0xcd 2M 64k")  # what it wrote after the snapshot
    assert w.returncode == 0, w.stderr
    if cancel:
        jobs = JobStore(db.connect(settings.db_path))
        jobs.request_cancel(jobs.list(type="backup", vm=t.uuid, limit=1)[0].id)
    th.join(120)
    eng.close()
    out["overlay"] = ovl
    return out


def _assert_merged(settings: Any, t: Any, ovl: str) -> None:
    assert [d.path for d in disks(t.dom, inactive=True)] == [t.base]
    assert not Path(ovl).exists()
    r = qemu_io(t.base, "read -P 0xcd 2M 64k")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    assert t.uuid not in [i.vm_uuid for i in IntentStore(db.connect(settings.db_path)).pending()]
    t.dom.create()
    assert [d.path for d in disks(t.dom)] == [t.base]


def test_guest_shut_off_mid_copy_is_merged_offline_at_commit(
    settings: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup completes; its commit step merges the overlay with qemu-img since the VM is off."""
    t = tiny()
    out = _shut_off_mid_copy(settings, t, monkeypatch, cancel=False)
    assert "error" not in out, out.get("error")
    _assert_merged(settings, t, out["overlay"])


def test_cancel_after_guest_shut_off_merges_offline(
    settings: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel takes the undo path, which merges offline and only then drops the intent."""
    t = tiny()
    out = _shut_off_mid_copy(settings, t, monkeypatch, cancel=True)
    assert getattr(out.get("error"), "code", None) == "JOB_CANCELLED", out
    _assert_merged(settings, t, out["overlay"])
