"""The Windows VSS quiescer's logic, exercised against a FAKE VssBackend (VSS cannot run on this Linux host).

These tests do not touch Windows or VSS: they check the requester logic (backup type, writer failures ->
FILE_SYSTEM, abort on failure, the ~10 s hold limit -> held=False, watchdog capped at the hold limit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from agent.exceptions import QuiesceUnavailable, VssFailed
from agent.freeze import FreezeManager
from agent.quiesce.base import Consistency, FsEntry
from agent.quiesce.windows_vss import VSS_HOLD_LIMIT_S, VssQuiescer, WriterStatus, load_windows_backend

pytestmark = pytest.mark.windows_fake


class FakeVss:
    """FAKE of the Windows VSS calls: records them, and can fail a writer or a phase."""

    def __init__(self, *, writer_fails: bool = False, freeze_error: bool = False,
                 timeout_on_release: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.writer_fails = writer_fails
        self.freeze_error = freeze_error
        self.timeout_on_release = timeout_on_release

    def volumes(self) -> list[FsEntry]:
        """C: and D: are NTFS; E: is FAT32 (no shadow copies)."""
        return [FsEntry("C:\\", "\\\\?\\Volume{1}", "NTFS", True),
                FsEntry("D:\\", "\\\\?\\Volume{2}", "NTFS", True),
                FsEntry("E:\\", "\\\\?\\Volume{3}", "FAT32", False, "no shadow copy support")]

    def begin(self, backup_type: str, volumes: Sequence[str]) -> list[WriterStatus]:
        self.calls.append(("begin", (backup_type, list(volumes))))
        return [WriterStatus("SqlServerWriter", "STABLE")]

    def freeze(self, timeout_s: float) -> list[WriterStatus]:
        self.calls.append(("freeze", timeout_s))
        if self.freeze_error:
            raise OSError("VSS_E_FLUSH_WRITES_TIMEOUT")
        state = "FAILED_AT_FREEZE" if self.writer_fails else "FROZEN"
        return [WriterStatus("SqlServerWriter", state, failed=self.writer_fails)]

    def release(self) -> list[WriterStatus]:
        self.calls.append(("release", None))
        return [WriterStatus("SqlServerWriter", "TIMEOUT" if self.timeout_on_release else "STABLE")]

    def abort(self) -> None:
        self.calls.append(("abort", None))


def test_default_backup_type_is_copy_and_writers_give_application() -> None:
    """FAKE backend: COPY by default (in-guest backup chains survive); healthy writers -> APPLICATION."""
    fake = FakeVss()
    q = VssQuiescer(fake)
    out = q.freeze(None)
    assert fake.calls[0] == ("begin", ("COPY", ["C:\\", "D:\\"]))
    assert out.consistency is Consistency.APPLICATION and out.frozen == ["C:\\", "D:\\"]
    assert ("E:\\", "no shadow copy support") in out.skipped
    th = q.thaw()
    assert th.held and th.thawed == ["C:\\", "D:\\"] and fake.calls[-1] == ("release", None)


def test_full_backup_type_and_volume_selection() -> None:
    """FAKE backend: FULL when configured; only the requested volume is added."""
    fake = FakeVss()
    VssQuiescer(fake, "FULL").freeze(["d:\\"])
    assert fake.calls[0] == ("begin", ("FULL", ["D:\\"]))
    with pytest.raises(VssFailed):
        VssQuiescer(fake, "INCREMENTAL")


def test_failed_writer_gives_file_system() -> None:
    """FAKE backend: a writer failing at freeze -> FILE_SYSTEM, never silently APPLICATION."""
    assert VssQuiescer(FakeVss(writer_fails=True)).freeze(None).consistency is Consistency.FILE_SYSTEM


def test_freeze_error_aborts_the_set() -> None:
    """FAKE backend: an error in DoSnapshotSet aborts the backup and raises VSS_FAILED."""
    fake = FakeVss(freeze_error=True)
    with pytest.raises(VssFailed):
        VssQuiescer(fake).freeze(None)
    assert fake.calls[-1] == ("abort", None)


def test_writer_timeout_means_not_held() -> None:
    """FAKE backend: a writer reporting TIMEOUT at release (hold limit passed) -> held=False."""
    q = VssQuiescer(FakeVss(timeout_on_release=True))
    q.freeze(None)
    th = q.thaw()
    assert not th.held and th.errors


def test_manager_caps_timeout_at_vss_hold_limit() -> None:
    """FAKE backend: the watchdog cannot exceed VSS's ~10 s hold; a short one auto-thaws and reports CRASH."""
    m = FreezeManager(VssQuiescer(FakeVss()), default_timeout_s=30.0, max_timeout_s=60.0)
    assert m.max_timeout_s == VSS_HOLD_LIMIT_S and m.default_timeout_s == VSS_HOLD_LIMIT_S
    token, _ = m.freeze(None, 0.3, "job")
    time.sleep(0.8)
    r = m.thaw(token)
    assert r.auto_thawed and not r.held and r.consistency is Consistency.CRASH


def test_real_backend_only_on_windows() -> None:
    """The COM boundary refuses to load off Windows (QUIESCE_UNAVAILABLE)."""
    with pytest.raises(QuiesceUnavailable):
        load_windows_backend()
