"""Starting a shut-off VM while its disks are copied is refused by QEMU's image lock: the point is never torn.

A defined, never-started OS-less domain with a 16 MiB qcow2 disk (12 MiB of data) is backed up with the copy
throttled (VMBACKUP_FAULT_COPY_DELAY_S); mid-copy the test starts the domain, which must fail with QEMU's
"Failed to get "write" lock"; the published point must hold exactly the disk as it was; afterwards the VM starts.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.vault import sparse
from controller.vault.vault import Vault
from tests.backup.helpers import qemu_io
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm


def test_starting_a_shut_off_vm_mid_copy_is_refused(
    settings: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start fails on the image lock; the point equals the disk; the VM starts once the backup is done."""
    t = tiny()
    w = qemu_io(t.base, "write -P 0x5a 0 12M")
    assert w.returncode == 0, w.stderr
    before = sparse.stream(Path(t.base)).digest
    register_without_agent(settings, t.uuid, t.name)
    monkeypatch.setenv("VMBACKUP_FAULT_COPY_DELAY_S", "1.5")

    copying = threading.Event()
    eng = BackupEngine(settings, progress=lambda _t, done, _total: copying.set() if done else None)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = eng.run(BackupRequest(vm=t.name, compression="none"))  # stored bytes = the disk's
        except BaseException as e:
            out["error"] = e

    th = threading.Thread(target=run)
    th.start()
    assert copying.wait(60), "the copy never started"
    with pytest.raises(libvirt.libvirtError) as ei:
        t.dom.create()
    assert "lock" in str(ei.value), str(ei.value)
    th.join(120)
    assert "error" not in out, out.get("error")
    res: BackupResult = out["result"]
    assert res.consistency == "CRASH"

    point = next(p for p in Vault(settings.vault).list_points(t.uuid) if p.point_id == res.point_id)
    disk = point.manifest.disks[0]
    assert disk.digest == before == sparse.stream(Path(t.base)).digest
    t.dom.create()  # the locks are gone with the backup
    assert t.dom.isActive()
    eng.close()
