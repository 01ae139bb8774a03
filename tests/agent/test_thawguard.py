"""The thaw guard: its state machine with a fake ioctl, thaw-at-start, and a real SIGKILL of a freezing process.

The last tests are real: loop mounts frozen by a child process that is then SIGKILLed (root; only this test's
own loop mounts are ever frozen, see conftest.guard).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.exceptions import FreezeFailed
from agent.quiesce.fsfreeze import FIFREEZE, FITHAW, FsFreezer
from agent.quiesce.mounts import Mount
from agent.thawguard import GuardLoop, ThawGuard, thaw_all_eligible
from tests.agent.helpers import LoopFs, blocks, guard, is_frozen, thaw_quietly, writer


class FakeFs:
    """An ioctl that tracks which descriptors are frozen (FITHAW on an unfrozen one is EINVAL)."""

    def __init__(self) -> None:
        self.frozen: set[int] = set()
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, op: int, _arg: int) -> object:
        self.calls.append((fd, op))
        if op == FIFREEZE:
            self.frozen.add(fd)
        elif op == FITHAW:
            if fd not in self.frozen:
                raise OSError(errno.EINVAL, "not frozen")
            self.frozen.discard(fd)
        return 0


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loop_with(tmp_path: Path, n: int) -> tuple[GuardLoop, socket.socket, FakeFs, Clock, list[int]]:
    """A GuardLoop on one end of a socket pair, and ``n`` descriptors (of tmp dirs) the agent side sends."""
    agent_end, guard_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fs, clock = FakeFs(), Clock()
    fds = []
    for i in range(n):
        (tmp_path / f"m{i}").mkdir()
        fds.append(os.open(tmp_path / f"m{i}", os.O_RDONLY | os.O_DIRECTORY))
    return GuardLoop(guard_end, fs, clock), agent_end, fs, clock, fds


def arm(loop: GuardLoop, agent_end: socket.socket, fds: list[int], hold_s: float) -> None:
    """Send ARM with ``fds`` and let the loop answer it."""
    socket.send_fds(agent_end, [f"ARM {hold_s}".encode()], fds)
    assert loop.step()
    assert agent_end.recv(64) == b"OK"


def test_deadline_thaws_in_reverse_order_and_disarm_reports_it(tmp_path: Path) -> None:
    """No DISARM before the deadline: the guard thaws every armed fd (reverse order); DISARM says how many."""
    loop, agent_end, fs, clock, fds = loop_with(tmp_path, 2)
    arm(loop, agent_end, fds, 5.0)
    held = list(loop.held)
    for fd in held:
        fs(fd, FIFREEZE, 0)
    agent_end.send(b"START 0.05")  # the deadline restarts after the freeze
    assert loop.step() and loop.deadline == pytest.approx(clock.now + 0.05)
    clock.now += 1.0
    assert loop.step()  # nothing to read: the deadline passed
    assert fs.frozen == set() and [fd for fd, op in fs.calls if op == FITHAW] == held[::-1]
    assert loop.held == [] and loop.deadline is None
    agent_end.send(b"DISARM")
    assert loop.step()
    assert agent_end.recv(64) == b"DISARMED 2"


def test_disarm_in_time_thaws_nothing(tmp_path: Path) -> None:
    """DISARM before the deadline: the guard never calls FITHAW and reports 0; the fds are closed."""
    loop, agent_end, fs, _, fds = loop_with(tmp_path, 2)
    arm(loop, agent_end, fds, 60.0)
    held = list(loop.held)
    agent_end.send(b"DISARM")
    assert loop.step()
    assert agent_end.recv(64) == b"DISARMED 0"
    assert not [c for c in fs.calls if c[1] == FITHAW] and loop.held == [] and loop.deadline is None
    for fd in held:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_agent_gone_thaws_at_once(tmp_path: Path) -> None:
    """The agent's end closes while armed (it died): thaw now, long before the deadline, and stop serving."""
    loop, agent_end, fs, _, fds = loop_with(tmp_path, 3)
    arm(loop, agent_end, fds, 3600.0)
    for fd in loop.held:
        fs(fd, FIFREEZE, 0)
    agent_end.close()
    assert loop.step() is False
    assert fs.frozen == set()


def test_thaw_all_eligible_thaws_only_frozen_freezable_mounts(tmp_path: Path) -> None:
    """At agent start: FITHAW every freezable mount of mountinfo; report only those that were frozen."""
    a, b, t = tmp_path / "a", tmp_path / "b", tmp_path / "t"
    for d in (a, b, t):
        d.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"1 0 8:1 / {a} rw - ext4 /dev/vda1 rw\n"
        f"2 1 8:2 / {b} rw - xfs /dev/vdb rw\n"
        f"3 1 0:30 / {t} rw - tmpfs tmpfs rw\n"
    )
    fs = FakeFs()
    touched: list[str] = []

    def ioctl(fd: int, op: int, arg: int) -> object:
        touched.append(os.readlink(f"/proc/self/fd/{fd}"))
        if touched[-1] == str(b):  # only b was left frozen
            fs.frozen.add(fd)
        return fs(fd, op, arg)

    was_frozen, errors = thaw_all_eligible(mountinfo, ioctl)
    assert was_frozen == [str(b)] and errors == []
    assert touched == [str(a), str(b)]  # thaw order = mount order; tmpfs is never touched


def test_freezer_arms_before_freezing_and_reports_early_release(tmp_path: Path) -> None:
    """FsFreezer hands the fds to the guard before the first FIFREEZE; a guard that thawed makes it not held."""
    events: list[str] = []
    fs = FakeFs()

    def ioctl(fd: int, op: int, arg: int) -> object:
        events.append("FIFREEZE" if op == FIFREEZE else "FITHAW")
        return fs(fd, op, arg)

    class Guard:
        thawed = 0

        def arm(self, fds: list[int], hold_s: float) -> None:
            events.append(f"arm {len(fds)} {hold_s}")

        def started(self, hold_s: float) -> None:
            events.append("started")

        def disarm(self) -> int:
            events.append("disarm")
            return self.thawed

    plan = []
    for i in range(2):
        d = tmp_path / f"m{i}"
        d.mkdir()
        st = d.stat()
        plan.append(Mount(i, 0, (os.major(st.st_dev), os.minor(st.st_dev)), str(d), ("rw",), "ext4",
                          "/dev/vda", ("rw",)))
    g = Guard()
    freezer = FsFreezer(ioctl, g)
    freezer.freeze(plan, 7.0)
    freezer.thaw()
    assert events == ["arm 2 7.0", "FIFREEZE", "FIFREEZE", "started", "FITHAW", "FITHAW", "disarm"]
    assert freezer.released_early == []
    g.thawed = 2  # the guard's deadline came first: it thawed, so our FITHAWs find nothing frozen
    freezer.freeze(plan, 7.0)
    fs.frozen.clear()
    freezer.thaw()
    assert freezer.released_early == [p.mount_point for p in reversed(plan)]


# --- real: loop mounts, a real guard process, a real SIGKILL (root) -------------------------------------------

CHILD = """
import sys, time
from pathlib import Path
from agent.quiesce.linux import LinuxQuiescer
from agent.thawguard import ThawGuard
g = ThawGuard()
g.start()
q = LinuxQuiescer(Path(sys.argv[1]), 5.0, sys.argv[2:], guard=g)
out = q.freeze(sys.argv[2:], 30.0)
print("frozen", g.pid, *out.frozen, flush=True)
time.sleep(3600)
"""


@pytest.mark.root
def test_sigkill_while_frozen_thaws_within_a_second(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A process freezes two loop mounts through LinuxQuiescer + ThawGuard (30 s hold), then is SIGKILLed.

    Before the guard existed nothing thawed them (the watchdog was a thread of the killed process). Now its guard
    sees the socket close and thaws at once: a writer blocked on the frozen fs completes within 2 s of the kill.
    """
    mounts = guard([f.mount for f in loopfs], loopfs)
    child = subprocess.Popen([sys.executable, "-B", "-c", CHILD, str(tmp_path / "no-hooks"), *mounts],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    w: subprocess.Popen[bytes] | None = None
    try:
        line = child.stdout.readline().split() if child.stdout else []
        assert line[:1] == ["frozen"] and sorted(line[2:]) == sorted(mounts), line
        guard_pid = int(line[1])
        w = writer(loopfs[0].mount)
        assert blocks(w, 0.5), "the write went through: not frozen"
        t_kill = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert w.wait(timeout=10) == 0
        thawed_after = time.monotonic() - t_kill
        assert thawed_after < 2.0, f"thawed {thawed_after:.2f} s after SIGKILL"
        for fs in loopfs:
            assert not is_frozen(fs.mount), f"{fs.mount} still frozen"
        deadline = time.monotonic() + 5  # the guard exits once the agent's end is closed
        while time.monotonic() < deadline and os.path.exists(f"/proc/{guard_pid}"):
            time.sleep(0.05)
        assert not _alive(guard_pid), "the guard outlived its agent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for fs in loopfs:  # never leave a blocked writer holding a mount busy at teardown
            thaw_quietly(fs.mount)
        if w is not None:
            w.wait(timeout=10)


@pytest.mark.root
def test_guard_thaws_at_its_deadline_when_the_agent_hangs(loopfs: list[LoopFs]) -> None:
    """The agent is alive but never thaws (we just do not DISARM): the guard thaws at hold + grace, and DISARM
    then reports that it did."""
    mounts = guard([f.mount for f in loopfs], loopfs)
    g = ThawGuard()
    g.start()
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in mounts]
    try:
        g.arm(fds, 0.2)
        for fd in fds:
            fcntl.ioctl(fd, FIFREEZE, 0)
        t0 = time.monotonic()
        g.started(0.2)
        w = writer(loopfs[1].mount)
        assert w.wait(timeout=10) == 0
        waited = time.monotonic() - t0
        assert 2.0 <= waited < 4.0, f"the guard thawed after {waited:.2f} s (hold 0.2 + grace 2)"
        assert g.disarm() == len(mounts)
    finally:
        for fd in fds:
            os.close(fd)
        g.close()


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_freeze_is_refused_when_the_guard_cannot_start(tmp_path: Path) -> None:
    """No guard process (its interpreter exits at once): FsFreezer raises FREEZE_FAILED before any FIFREEZE."""
    fs = FakeFs()
    d = tmp_path / "m"
    d.mkdir()
    st = d.stat()
    plan = [Mount(1, 0, (os.major(st.st_dev), os.minor(st.st_dev)), str(d), ("rw",), "ext4", "/dev/vda", ("rw",))]
    g = ThawGuard(python="/bin/false", reply_timeout_s=2.0)
    with pytest.raises(FreezeFailed) as exc:
        FsFreezer(fs, g).freeze(plan, 5.0)
    assert exc.value.code == "FREEZE_FAILED" and "thaw guard" in exc.value.message
    assert fs.calls == []
    g.close()
