"""The agent inside a real lab VM (installed by registration): freeze / and a data filesystem for real.

While frozen we never open a new SSH session (a session may write to the frozen root); the evidence comes from a
writer started before the freeze, which timestamps its attempt and its completion in /run (tmpfs, never frozen),
and from GetInfo, which must keep answering while the guest is frozen.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller import db
from controller.backup.quiesce import agent_client
from controller.registration.store import get_registration

pytestmark = pytest.mark.vm

WRITER_DELAY_S = 6  # the writer tries its write this long after it starts: well after our freeze
HOLD_S = 10.0  # how long we keep the guest frozen


def test_write_blocks_until_thaw_and_getinfo_answers(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """Freeze / and /data1: a write to /data1 waits for the thaw; GetInfo reports both frozen meanwhile."""
    reg = get_registration(db.connect(settings.db_path), lab_vm.uuid)
    assert reg is not None
    rc, _, err = lab_vm.ssh(
        f"rm -f /run/w.*; nohup sh -c 'sleep {WRITER_DELAY_S}; date +%s.%N > /run/w.start; "
        "echo x >> /data1/frozen-write; date +%s.%N > /run/w.end' >/dev/null 2>&1 &"
    )
    assert rc == 0, err
    with agent_client(settings, reg) as client:
        fr = client.freeze(["/", "/data1"], timeout_s=30, job_id="in-vm-test")
        try:
            assert sorted(fr.frozen) == ["/", "/data1"], fr
            time.sleep(HOLD_S)
            info = client.get_info()
            frozen = {f.mount_point for f in info.filesystems if f.frozen}
            assert {"/", "/data1"} <= frozen, info.filesystems
            assert "/data2" not in frozen
        finally:
            th = client.thaw(fr.token)
    assert th.held and not th.auto_thawed, th
    assert sorted(th.thawed) == ["/", "/data1"]
    assert th.frozen_ms >= HOLD_S * 1000
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        rc, out, _ = lab_vm.ssh("cat /run/w.start /run/w.end 2>/dev/null")
        if rc == 0 and len(out.split()) == 2:
            break
        time.sleep(1)
    start, end = (float(x) for x in out.split())
    assert end - start >= 2.0, f"the write finished {end - start:.2f} s after it started: not blocked"
