"""Real FIFREEZE/FITHAW on loop-mounted ext4 and xfs (root). Only this test's own loop mounts are frozen."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from agent.exceptions import FreezeFailed, InvalidRequest, MountNotAllowed
from agent.quiesce.base import Consistency
from agent.quiesce.fsfreeze import FIFREEZE
from agent.quiesce.linux import LinuxQuiescer
from tests.agent.helpers import LoopFs, blocks, guard, is_frozen, writer

pytestmark = pytest.mark.root


def quiescer(fss: list[LoopFs], hooks_dir: Path, **kw: object) -> LinuxQuiescer:
    """A quiescer that may only ever touch ``fss``."""
    return LinuxQuiescer(hooks_dir, 5.0, guard([f.mount for f in fss], fss), **kw)  # type: ignore[arg-type]


def test_write_blocks_while_frozen_and_completes_after_thaw(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A write+fsync into each frozen filesystem waits until FITHAW, then completes."""
    q = quiescer(loopfs, tmp_path / "no-hooks")
    out = q.freeze(guard([f.mount for f in loopfs], loopfs))
    procs = []
    try:
        assert sorted(out.frozen) == sorted(str(f.mount) for f in loopfs)
        assert out.consistency is Consistency.FILE_SYSTEM  # no hooks -> never APPLICATION
        procs = [writer(f.mount) for f in loopfs]
        assert all(blocks(p, 1.5) for p in procs), "a write finished while the filesystem was frozen"
    finally:
        thawed = q.thaw()
    assert sorted(thawed.thawed) == sorted(out.frozen) and not thawed.errors
    assert [p.wait(timeout=20) for p in procs] == [0, 0]
    assert all((f.mount / "probe.bin").stat().st_size == 4096 for f in loopfs)
    assert not any(is_frozen(f.mount) for f in loopfs)


def test_nested_mount_frozen_first_thawed_last(loop_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A filesystem mounted on top of another is frozen before it, and thawed after it."""
    outer = loop_factory("outer", "ext4")
    (outer.mount / "inner").mkdir()
    inner = loop_factory("inner", "xfs", base=outer.mount)
    fss = [outer, inner]
    calls: list[tuple[str, int]] = []

    def recording_ioctl(fd: int, op: int, arg: int) -> object:
        import fcntl
        import os
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), op))
        return fcntl.ioctl(fd, op, arg)

    q = quiescer(fss, tmp_path / "none", ioctl=recording_ioctl)
    out = q.freeze(guard([outer.mount, inner.mount], fss))
    thawed = q.thaw()
    assert out.frozen == [str(inner.mount), str(outer.mount)]
    assert thawed.thawed == [str(outer.mount), str(inner.mount)]
    assert [p for p, op in calls if op == FIFREEZE] == [str(inner.mount), str(outer.mount)]


def test_failure_halfway_thaws_everything_already_frozen(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """A (forced) EIO on the second FIFREEZE rolls back the first; nothing stays frozen."""
    import fcntl
    state = {"freezes": 0}

    def failing_second(fd: int, op: int, arg: int) -> object:
        if op == FIFREEZE:
            state["freezes"] += 1
            if state["freezes"] == 2:
                raise OSError(errno.EIO, "forced I/O error (test)")
        return fcntl.ioctl(fd, op, arg)

    q = quiescer(loopfs, tmp_path / "none", ioctl=failing_second)
    with pytest.raises(FreezeFailed) as err:
        q.freeze(guard([f.mount for f in loopfs], loopfs))
    assert "forced I/O error" in str(err.value) and "thawed again" in str(err.value)
    assert state["freezes"] == 2
    procs = [writer(f.mount) for f in loopfs]
    assert [p.wait(timeout=10) for p in procs] == [0, 0], "a write blocked: something stayed frozen"
    assert not any(is_frozen(f.mount) for f in loopfs)


def test_read_only_mount_is_skipped_with_reason(loop_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A read-only mount is reported as skipped, the writable one is frozen."""
    rw = loop_factory("rw", "ext4")
    ro = loop_factory("ro", "ext4", read_only=True)
    q = quiescer([rw, ro], tmp_path / "none")
    out = q.freeze(guard([rw.mount, ro.mount], [rw, ro]))
    q.thaw()
    assert out.frozen == [str(rw.mount)]
    assert dict(out.skipped)[str(ro.mount)].startswith("mounted read-only")


def test_requests_outside_allowed_or_unknown_are_refused(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """The allow-list refuses / before anything is frozen; a path that is not a mount point is refused."""
    q = quiescer(loopfs, tmp_path / "none")
    with pytest.raises(MountNotAllowed):
        q.freeze(["/"])
    q2 = LinuxQuiescer(tmp_path / "none", 5.0, [*map(str, (f.mount for f in loopfs)), str(tmp_path)])
    with pytest.raises(InvalidRequest, match="not mount points"):
        q2.freeze([str(tmp_path)])
    assert not any(is_frozen(f.mount) for f in loopfs)


def test_thaw_is_fast(loopfs: list[LoopFs], tmp_path: Path) -> None:
    """Freeze + thaw of two small filesystems takes well under a second (measured, printed)."""
    q = quiescer(loopfs, tmp_path / "none")
    t0 = time.monotonic()
    out = q.freeze(guard([f.mount for f in loopfs], loopfs))
    t1 = time.monotonic()
    q.thaw()
    t2 = time.monotonic()
    print(f"freeze {1000 * (t1 - t0):.1f} ms (agent says {out.freeze_ms} ms), thaw {1000 * (t2 - t1):.1f} ms")
    assert t2 - t0 < 5.0
