"""A paused VM is backed up through the external snapshot (QEMU holds its images open), never copied directly.

A paused guest cannot answer its agent, so the agent is not asked: the point is CRASH-consistent with a reason that
says so, the VM stays paused on its original file, and no overlay is left. (Before, a paused VM was treated like a
shut-off one and its open images were copied under QEMU's feet.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.engine import BackupEngine, BackupRequest
from controller.vault import Vault
from controller.virt.domain import disks
from tests.backup.helpers import qemu_io
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm


def test_paused_vm_is_snapshotted_without_asking_the_agent(settings: Any, tiny: Any) -> None:
    t = tiny()
    w = qemu_io(t.base, "write -P 0x3c 0 4M")
    assert w.returncode == 0, w.stderr
    register_without_agent(settings, t.uuid, t.name)  # its agent port answers nothing: it must not even be tried
    t.dom.create()
    t.dom.suspend()
    eng = BackupEngine(settings)
    t0 = time.monotonic()
    try:
        res = eng.run(BackupRequest(vm=t.name, freeze_timeout_s=30.0))
    finally:
        eng.close()
    took = time.monotonic() - t0
    assert res.consistency == "CRASH" and "paused" in res.consistency_reason, res
    assert "snapshot" in res.consistency_reason, res  # not copied directly under a QEMU that holds the image
    assert took < 30.0, f"the agent was asked and timed out ({took:.1f} s)"
    assert t.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert [d.path for d in disks(t.dom)] == [t.base]
    assert [f for f in Path(t.base).parent.iterdir() if ".vmb-" in f.name] == []
    point = Vault(settings.vault).get_point(res.point_id)
    stored = point.path / point.manifest.disks[0].file
    r = qemu_io(str(stored), "read -P 0x3c 0 4M")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    t.dom.resume()
