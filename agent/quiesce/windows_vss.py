"""The Windows quiescer: a VSS snapshot set with writers (application-consistent), held across the
hypervisor snapshot.

How it works (the qemu-guest-agent VSS design): the agent is the VSS *requester*. ``freeze`` initialises a
backup (type COPY by default, so in-guest backup chains such as SQL Server differentials are not broken;
FULL is configurable), adds the volumes, runs PrepareForBackup and starts DoSnapshotSet. VSS then asks the
writers to freeze and flushes/holds I/O, and calls the vmbackup VSS *provider*'s CommitSnapshots, which blocks
until the agent's ``thaw``: the hypervisor snapshot is taken while writers are frozen. VSS holds writes for at
most ~10 s (the Flush-and-Hold limit); when exceeded it aborts the set and the writers report a timeout, which
``thaw`` turns into ``held=False``.

The Windows calls are behind :class:`VssBackend`. The real implementation (COM through ctypes/comtypes) is a
BOUNDARY that only loads on Windows and is not part of this build; on Linux the tests drive
:class:`VssQuiescer` with a FAKE backend (tests/agent/test_vss_fake.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.exceptions import QuiesceUnavailable, VssFailed
from agent.quiesce.base import Consistency, FreezeOutcome, FsEntry, ThawOutcome

#: VSS keeps writes held for at most this long between freeze and thaw (Windows' Flush-and-Hold limit).
VSS_HOLD_LIMIT_S = 10.0


@dataclass(frozen=True)
class WriterStatus:
    """One VSS writer's state after a phase."""

    name: str
    state: str  # e.g. "STABLE", "FROZEN", "FAILED_AT_FREEZE", "TIMEOUT"
    failed: bool = False
    error: str = ""


class VssBackend(Protocol):
    """The few Windows VSS calls the quiescer needs (real: IVssBackupComponents via COM; tests: a fake)."""

    def volumes(self) -> list[FsEntry]:
        """Local NTFS/ReFS volumes that support shadow copies."""
        ...

    def begin(self, backup_type: str, volumes: Sequence[str]) -> list[WriterStatus]:
        """InitializeForBackup, SetBackupState, GatherWriterMetadata, StartSnapshotSet, AddToSnapshotSet,
        PrepareForBackup; return the writers' states."""
        ...

    def freeze(self, timeout_s: float) -> list[WriterStatus]:
        """DoSnapshotSet; return once the provider's CommitSnapshots holds I/O (writers frozen)."""
        ...

    def release(self) -> list[WriterStatus]:
        """Let CommitSnapshots return, wait for DoSnapshotSet, BackupComplete; return writer states."""
        ...

    def abort(self) -> None:
        """AbortBackup: drop the snapshot set, writers thaw."""
        ...


class VssQuiescer:
    """Holds a VSS snapshot set (writers frozen) between freeze and thaw."""

    name = "windows-vss"
    capabilities: tuple[str, ...] = ("vss", "watchdog")
    max_hold_s: float | None = VSS_HOLD_LIMIT_S

    def __init__(self, backend: VssBackend, backup_type: str = "COPY") -> None:
        if backup_type not in ("COPY", "FULL"):
            raise VssFailed(f"unknown VSS backup type {backup_type!r}; use COPY or FULL")
        self.backend = backend
        self.backup_type = backup_type
        self._frozen: list[str] = []
        self._frozen_at = 0.0

    def filesystems(self) -> list[FsEntry]:
        """The volumes VSS can snapshot."""
        return self.backend.volumes()

    def hooks(self) -> list[str]:
        """VSS writers play the role of hooks; none are run by the agent."""
        return []

    def freeze(self, mount_points: Sequence[str] | None, hold_s: float = 0.0) -> FreezeOutcome:
        """Begin the backup, freeze writers and hold I/O; abort the set on any failure (VSS bounds the hold)."""
        vols = [v for v in self.backend.volumes() if v.eligible]
        skipped = [(v.mount_point, v.reason) for v in self.backend.volumes() if not v.eligible]
        if mount_points:
            wanted = {m.upper() for m in mount_points}
            skipped += [(v.mount_point, "not requested") for v in vols if v.mount_point.upper() not in wanted]
            vols = [v for v in vols if v.mount_point.upper() in wanted]
        names = [v.mount_point for v in vols]
        t0 = time.monotonic()
        try:
            self.backend.begin(self.backup_type, names)
            writers = self.backend.freeze(VSS_HOLD_LIMIT_S)
        except VssFailed:
            self.backend.abort()
            raise
        except OSError as exc:
            self.backend.abort()
            raise VssFailed(f"VSS snapshot set failed: {exc}") from exc
        self._frozen, self._frozen_at = names, time.monotonic()
        failed = [w for w in writers if w.failed]
        consistency = Consistency.FILE_SYSTEM if failed else Consistency.APPLICATION
        if not names:
            consistency = Consistency.CRASH
        return FreezeOutcome(names, skipped, consistency, [], int((self._frozen_at - t0) * 1000))

    def thaw(self) -> ThawOutcome:
        """Release the hold; report held=False when VSS's hold limit passed or a writer timed out."""
        held_s = time.monotonic() - self._frozen_at
        thawed, self._frozen = self._frozen, []
        try:
            writers = self.backend.release()
        except OSError as exc:
            self.backend.abort()
            return ThawOutcome(thawed, [f"VSS release failed: {exc}"], [], held=False)
        timed_out = [w.name for w in writers if w.state == "TIMEOUT" or w.failed]
        held = held_s <= VSS_HOLD_LIMIT_S and not timed_out
        errors = [f"writer {n} failed or timed out" for n in timed_out]
        return ThawOutcome(thawed, errors, [], held=held)


def load_windows_backend() -> VssBackend:
    """The real COM backend. BOUNDARY: only exists on Windows and is not part of this build."""
    if sys.platform != "win32":
        raise QuiesceUnavailable("the VSS backend only loads on Windows")
    raise QuiesceUnavailable(  # pragma: no cover - Windows only
        "the COM VSS backend (IVssBackupComponents via comtypes) is not shipped in this build"
    )
