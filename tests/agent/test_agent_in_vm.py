"""The agent inside a real lab VM (installed by registration): freeze / and a data filesystem for real.

While frozen we never open a new SSH session (a session may write to the frozen root); the evidence comes from a
writer started before the freeze, which timestamps its attempt and its completion in /run (tmpfs, never frozen),
and from GetInfo, which must keep answering while the guest is frozen.

The kill tests SIGKILL the agent while it holds / and /data1 frozen (the killer is started before the freeze) and
time how long the guest stays frozen after the kill; a safety net started with it unfreezes after
``SAFETY_S`` so a failure does not leave the shared VM frozen.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller import db
from controller.agentclient import open_agent
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
    with open_agent(settings, reg) as client:
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


FREEZE_TIMEOUT_S = 30.0  # the agent's watchdog for the killed freeze: every fs must be writable within it + 5 s
KILL_AFTER_S = 10  # the killer fires this long after it starts: after our Freeze has returned
SAFETY_S = 60  # the safety net unfreezes this long after the kill (a failing run must not leave the VM frozen)
UNIT = "vmbackup-agent.service"


def _kill_while_frozen(lab_vm: Any, settings: Any, kill_cmd: str, job_id: str) -> dict[str, float]:
    """Freeze / and /data1, let a pre-started killer run ``kill_cmd`` ($PID = the agent), time the thaw.

    The killer timestamps (guest clock, in /run) the kill and the completion of a write to /data1 and to /
    (/var/tmp); both writes block while their filesystem is frozen. Returns the stamps (guest epoch seconds).
    """
    reg = get_registration(db.connect(settings.db_path), lab_vm.uuid)
    assert reg is not None
    rc, out, err = lab_vm.ssh(f"systemctl show -p MainPID --value {UNIT}")
    assert rc == 0 and int(out) > 0, (out, err)
    pid = int(out)
    killer = (f"sleep {KILL_AFTER_S}; date +%s.%N > /run/k.kill; {kill_cmd.replace('$PID', str(pid))}; "
              "echo x >> /data1/k-probe; date +%s.%N > /run/k.data1; "
              "echo x >> /var/tmp/k-probe; date +%s.%N > /run/k.root")
    safety = f"sleep {KILL_AFTER_S + SAFETY_S}; date +%s.%N > /run/k.safety; fsfreeze -u /data1; fsfreeze -u /"
    rc, _, err = lab_vm.ssh(
        f"rm -f /run/k.*; nohup sh -c '{killer}' >/dev/null 2>&1 & "
        f"nohup sh -c '{safety}' >/dev/null 2>&1 & echo $! > /run/k.safety.pid"
    )
    assert rc == 0, err
    t_started = time.monotonic()
    with open_agent(settings, reg) as client:
        fr = client.freeze(["/", "/data1"], timeout_s=FREEZE_TIMEOUT_S, job_id=job_id)
    assert sorted(fr.frozen) == ["/", "/data1"], fr
    assert time.monotonic() - t_started < KILL_AFTER_S - 1, "Freeze returned too late: the kill may precede it"
    stamps = _wait_for_stamps(lab_vm, t_started + KILL_AFTER_S + SAFETY_S + 60)
    assert "kill" in stamps, f"the killer did not run: {stamps}"
    assert "safety" not in stamps, f"still frozen {SAFETY_S} s after the kill: only the safety net thawed: {stamps}"
    assert "root" in stamps, f"/ still frozen {SAFETY_S} s after the kill: {stamps}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # systemd restarted the agent; wait until it serves again
        try:
            with open_agent(settings, reg) as client:
                client.get_info()
            break
        except Exception:
            time.sleep(1)
    rc, out, err = lab_vm.ssh(f"kill $(cat /run/k.safety.pid) 2>/dev/null; systemctl show -p MainPID --value {UNIT}")
    assert rc == 0 and int(out) not in (0, pid), f"the agent was not restarted: MainPID {out!r} (was {pid})"
    for fs in ("data1", "root"):
        took = stamps[fs] - stamps["kill"]
        print(f"{job_id}: {fs} writable {took:.2f} s after the kill")
        assert took < FREEZE_TIMEOUT_S + 5, f"{fs} stayed frozen {took:.1f} s after the kill"
    return stamps


def _wait_for_stamps(lab_vm: Any, until: float) -> dict[str, float]:
    """Poll the killer's stamps until / was written or the safety net fired (or ``until``, host monotonic).

    A new non-pty SSH session that only reads /run works on a frozen / in the lab image; if one hangs, its
    timeout or the safety net ends it.
    """
    stamps: dict[str, float] = {}
    while time.monotonic() < until:
        try:
            rc, out, _ = lab_vm.ssh(
                # one "name=stamp" line per file; a file the killer has created but not yet written reads empty
                "for f in kill data1 root safety; do printf '%s=%s\\n' $f \"$(cat /run/k.$f 2>/dev/null)\"; done",
                timeout=SAFETY_S + 30)
        except Exception:
            continue
        if rc == 0:
            stamps = {k: float(v) for k, v in (line.split("=", 1) for line in out.split()) if v}
            if "root" in stamps or "safety" in stamps:
                break
        time.sleep(1)
    return stamps


def test_sigkill_of_the_agent_while_frozen_thaws(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """SIGKILL of the agent's main process while / and /data1 are frozen: its thaw guard thaws them at once;
    systemd restarts the agent, which freezes and thaws normally again."""
    stamps = _kill_while_frozen(lab_vm, settings, "kill -9 $PID", "in-vm-sigkill")
    assert max(stamps["data1"], stamps["root"]) - stamps["kill"] < 5.0, stamps
    rc, out, _ = lab_vm.ssh(f"journalctl -o cat -u {UNIT} --since @{int(stamps['kill']) - 1}")
    assert rc == 0 and "thaw guard:" in out, out[-2000:]
    reg = get_registration(db.connect(settings.db_path), lab_vm.uuid)
    assert reg is not None
    with open_agent(settings, reg) as client:  # the restarted agent (and its new guard) work
        fr = client.freeze(["/data1"], timeout_s=FREEZE_TIMEOUT_S, job_id="in-vm-after-kill")
        th = client.thaw(fr.token)
    assert th.held and th.thawed == ["/data1"], th


def test_killing_the_whole_unit_while_frozen_thaws(registered_vm: Any, lab_vm: Any, settings: Any) -> None:
    """SIGKILL of every process of the unit (agent and guard): systemd restarts it and the new agent thaws every
    freezable mount before it serves."""
    stamps = _kill_while_frozen(lab_vm, settings, f"systemctl kill -s KILL {UNIT}", "in-vm-cgroup-kill")
    rc, out, _ = lab_vm.ssh(f"journalctl -o cat -u {UNIT} --since @{int(stamps['kill']) - 1}")
    assert rc == 0 and "thawed at start" in out, out[-2000:]
