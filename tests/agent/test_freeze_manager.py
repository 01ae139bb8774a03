"""The freeze session on real loop mounts: watchdog auto-thaw, double freeze, wrong token, hooks (root)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.exceptions import AlreadyFrozen, InvalidRequest, InvalidToken, NotFrozen
from agent.freeze import FreezeManager
from agent.quiesce.base import Consistency
from agent.quiesce.linux import LinuxQuiescer
from tests.agent.helpers import LoopFs, blocks, guard, is_frozen, writer

pytestmark = pytest.mark.root


def manager(fss: list[LoopFs], hooks_dir: Path, hook_timeout_s: float = 5.0) -> FreezeManager:
    """A manager whose quiescer may only touch ``fss``."""
    q = LinuxQuiescer(hooks_dir, hook_timeout_s, guard([f.mount for f in fss], fss))
    return FreezeManager(q, default_timeout_s=10.0, max_timeout_s=60.0)


def hook(d: Path, name: str, body: str) -> Path:
    """Write an executable shell hook."""
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return p


def test_watchdog_thaws_and_thaw_reports_it(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """No Thaw within 1 s: the watchdog thaws; the later Thaw says held=False, auto_thawed, CRASH."""
    m = manager(loopfs, tmp_path / "none")
    token, _ = m.freeze(guard([f.mount for f in loopfs], loopfs), 1.0, "job-wd")
    p = writer(loopfs[0].mount)
    assert blocks(p, 0.5)
    assert p.wait(timeout=5) == 0  # unblocked by the watchdog, not by us
    st = m.status()
    assert not st.frozen and st.last_end == "auto-thawed" and st.last_job_id == "job-wd"
    r = m.thaw(token)
    assert r.auto_thawed and not r.held and r.consistency is Consistency.CRASH
    assert sorted(r.thawed) == sorted(str(f.mount) for f in loopfs)
    assert 900 <= r.frozen_ms < 3000
    with pytest.raises(NotFrozen):
        m.thaw(token)


def test_double_freeze_and_wrong_token_refused(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A second Freeze is ALREADY_FROZEN, a wrong token INVALID_TOKEN; the right one thaws (held)."""
    m = manager(loopfs, tmp_path / "none")
    mps = guard([f.mount for f in loopfs], loopfs)
    token, _ = m.freeze(mps, 20.0, "job-1")
    try:
        with pytest.raises(AlreadyFrozen) as e1:
            m.freeze(mps, 20.0, "job-2")
        assert e1.value.code == "ALREADY_FROZEN" and e1.value.grpc_status == "FAILED_PRECONDITION"
        with pytest.raises(InvalidToken):
            m.thaw("not-the-token")
        assert m.status().frozen
    finally:
        r = m.thaw(token)
    assert r.held and not r.auto_thawed and r.consistency is Consistency.FILE_SYSTEM
    assert not any(is_frozen(f.mount) for f in loopfs)


def test_timeout_above_maximum_refused(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A timeout above the documented maximum is refused before anything is frozen."""
    m = manager(loopfs, tmp_path / "none")
    with pytest.raises(InvalidRequest, match="outside"):
        m.freeze(guard([f.mount for f in loopfs], loopfs), 61.0, "job")
    assert not m.status().frozen


def test_shutdown_thaws(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """shutdown() (the SIGTERM path) thaws and then refuses new freezes."""
    m = manager(loopfs, tmp_path / "none")
    m.freeze(guard([f.mount for f in loopfs], loopfs), 30.0, "job")
    m.shutdown("signal")
    assert m.status().last_end == "signal"
    assert not any(is_frozen(f.mount) for f in loopfs)


def test_hooks_success_gives_application(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """All hooks succeed: APPLICATION; freeze hooks run before FIFREEZE, thaw hooks after FITHAW."""
    hooks = tmp_path / "hooks"
    log = tmp_path / "hooklog"  # on tmp_path, not on a frozen loop mount
    hook(hooks, "10-db", f'echo "db $1" >> {log}; echo flushed')
    hook(hooks, "20-app", f'echo "app $1" >> {log}')
    m = manager(loopfs, hooks)
    token, s = m.freeze(guard([f.mount for f in loopfs], loopfs), 20.0, "job")
    r = m.thaw(token)
    assert s.outcome.consistency is Consistency.APPLICATION
    assert [(h.name, h.action, h.exit_code) for h in s.outcome.hooks] == [
        ("10-db", "freeze", 0), ("20-app", "freeze", 0)]
    assert s.outcome.hooks[0].output.strip() == "flushed"
    assert [(h.name, h.action) for h in r.outcome.hooks] == [("20-app", "thaw"), ("10-db", "thaw")]
    assert log.read_text().split("\n")[:4] == ["db freeze", "app freeze", "app thaw", "db thaw"]


def test_failing_hook_gives_file_system(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """One hook fails: FILE_SYSTEM (not silently APPLICATION), the exit code and output reported."""
    hooks = tmp_path / "hooks"
    hook(hooks, "10-ok", "exit 0")
    hook(hooks, "20-bad", 'echo "cannot reach database" >&2; exit 3')
    m = manager(loopfs, hooks)
    token, s = m.freeze(guard([f.mount for f in loopfs], loopfs), 20.0, "job")
    m.thaw(token)
    assert s.outcome.consistency is Consistency.FILE_SYSTEM
    bad = next(h for h in s.outcome.hooks if h.name == "20-bad")
    assert bad.exit_code == 3 and "cannot reach database" in bad.output and not bad.ok
    assert len(s.outcome.frozen) == 2


def test_hanging_hook_is_killed_in_time(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A hook that hangs (with a child) is killed with its process group after its timeout."""
    hooks = tmp_path / "hooks"
    hook(hooks, "10-hang", 'if [ "$1" = freeze ]; then sleep 300 & sleep 300; fi')
    m = manager(loopfs, hooks, hook_timeout_s=1.0)
    t0 = time.monotonic()
    token, s = m.freeze(guard([f.mount for f in loopfs], loopfs), 20.0, "job")
    took = time.monotonic() - t0
    m.thaw(token)
    (h,) = s.outcome.hooks
    assert h.timed_out and h.exit_code == -9 and s.outcome.consistency is Consistency.FILE_SYSTEM
    assert 1.0 <= took < 4.0


def test_unsafe_hook_is_ignored_and_reported(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A world-writable hook is not run; it is reported, and consistency stays FILE_SYSTEM."""
    hooks = tmp_path / "hooks"
    hook(hooks, "10-open", "exit 0").chmod(0o777)
    m = manager(loopfs, hooks)
    token, s = m.freeze(guard([f.mount for f in loopfs], loopfs), 20.0, "job")
    m.thaw(token)
    (h,) = s.outcome.hooks
    assert "writable by group or others" in h.output and s.outcome.consistency is Consistency.FILE_SYSTEM


def test_guest_frozen_ms_spans_the_ioctls_not_the_hooks(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """Thaw reports first FIFREEZE -> last FITHAW: at least the hold, and with the hook times within the session."""
    hooks = tmp_path / "hooks"
    hook(hooks, "10-slow", "sleep 0.3")  # 0.3 s on freeze and again on thaw, outside the frozen span
    m = manager(loopfs, hooks)
    t0 = time.monotonic()
    token, _ = m.freeze(guard([f.mount for f in loopfs], loopfs), 20.0, "job-timed")
    time.sleep(0.2)
    r = m.thaw(token)
    total_ms = (time.monotonic() - t0) * 1000
    assert r.held and r.consistency is Consistency.APPLICATION
    assert r.freeze_hooks_ms >= 300 and r.thaw_hooks_ms >= 300
    assert 200 <= r.guest_frozen_ms < 200 + 1000
    assert r.guest_frozen_ms + r.freeze_hooks_ms + r.thaw_hooks_ms <= total_ms
    assert not any(is_frozen(f.mount) for f in loopfs)
