"""FIFREEZE / FITHAW on Linux filesystems, through ioctl on a descriptor of the mount point (no shelling out).

Safety rules: open every mount point first, flush each one (syncfs, so the FIFREEZEs inside the freeze have little
left to write), hand the descriptors to the thaw guard (a separate process that
thaws them if this one dies, see agent/thawguard.py) before the first FIFREEZE, then freeze in the planned order
and keep each descriptor open until thaw; if any freeze fails, thaw every filesystem already frozen (reverse
order) before raising; thaw never raises per filesystem, it records the error and goes on. Nothing here writes
to disk or logs to a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

from agent.exceptions import FreezeFailed
from agent.quiesce import rcu
from agent.quiesce.mounts import Mount, on_hardware_devices

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

#: The ioctl call, injectable so tests can force an error on a chosen filesystem.
IoctlFn = Callable[[int, int, int], object]
#: syncfs(2) of one descriptor's filesystem, injectable so tests can see when it runs.
SyncFn = Callable[[int], object]

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2): write out the dirty data of ``fd``'s filesystem; OSError on failure."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Guard(Protocol):
    """What FsFreezer needs from the thaw guard (agent.thawguard.ThawGuard)."""

    def arm(self, fds: list[int], hold_s: float) -> None:
        """Take the descriptors about to be frozen; raise FreezeFailed when it cannot."""
        ...

    def started(self, hold_s: float) -> None:
        """The freeze is complete; the guard's deadline restarts now."""
        ...

    def disarm(self) -> int:
        """After the thaw: how many filesystems the guard thawed itself (-1: unknown)."""
        ...


@dataclass
class _Thawers:
    """The threads of a simultaneous freeze: each one that froze its descriptor waits for ``go``, then FITHAWs it
    and leaves (start, end, error) in ``results`` under the descriptor."""

    go: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    results: dict[int, tuple[float, float, OSError | None]] = field(default_factory=dict)


@dataclass
class FrozenFs:
    """A filesystem this process froze, with the open descriptor used to thaw it."""

    mount_point: str
    fd: int


class FsFreezer:
    """Freezes and thaws a list of mounts, holding the descriptors in between."""

    def __init__(self, ioctl: IoctlFn | None = None, guard: Guard | None = None, sync: SyncFn | None = None,
                 together: Callable[[list[Mount]], bool] | None = None,
                 rcu_switch: Path | None = None) -> None:
        self._ioctl: IoctlFn = ioctl or fcntl.ioctl
        #: The kernel's rcu_expedited switch, on while the FIFREEZEs run (None: not touched; the agent passes
        #: rcu.RCU_EXPEDITED unless its config says expedite_rcu: false; see rcu.py).
        self._rcu_switch = rcu_switch
        self._sync: SyncFn = sync or syncfs
        #: Whether a plan's filesystems may freeze at the same time (default: all on hardware-backed disks).
        self._together = together or on_hardware_devices
        self.guard = guard
        self.frozen: list[FrozenFs] = []
        self._armed = False
        #: Mount points the last thaw found already thawed (by the guard or someone else): not held.
        self.released_early: list[str] = []
        #: Monotonic time right before the last freeze's first FIFREEZE ioctl (None: none issued).
        self.first_freeze_at: float | None = None
        #: Monotonic time right after the last thaw's last FITHAW ioctl (None: none issued).
        self.last_thaw_at: float | None = None
        #: The threads of the last simultaneous freeze, waiting to thaw (None: frozen one by one, or thawed).
        self._thawers: _Thawers | None = None

    def freeze(self, plan: list[Mount], hold_s: float = 0.0) -> tuple[list[str], list[tuple[str, str]]]:
        """Freeze ``plan`` in order (all at once when none can write through another); return (frozen,
        unsupported). Raise FreezeFailed after rollback.

        With a guard and ``hold_s`` > 0 the guard is armed before the first FIFREEZE and thaws by itself after
        ``hold_s`` (+ its grace) or as soon as this process dies; ``hold_s`` 0 freezes unguarded.
        """
        if self.frozen:
            raise FreezeFailed("a freeze is already held by this freezer")
        opened: list[tuple[Mount, int]] = []
        try:
            for mount in plan:
                opened.append((mount, _open_checked(mount)))
        except OSError as exc:
            for _, fd in opened:
                os.close(fd)
            raise FreezeFailed(f"opening {mount.mount_point} failed: {exc.strerror or exc}; nothing frozen") from exc
        self._presync([fd for _, fd in opened])
        together = len(opened) > 1 and self._together([m for m, _ in opened])
        if self.guard is not None and hold_s > 0 and opened:
            try:
                self.guard.arm([fd for _, fd in opened], hold_s)
            except Exception:
                for _, fd in opened:
                    os.close(fd)
                raise
            self._armed = True
        self.first_freeze_at = self.last_thaw_at = None
        with rcu.expedited(self._rcu_switch):  # switched before the clock starts, back right after the FIFREEZEs
            skipped = self._freeze_opened(opened, together)
        if self._armed:
            self.guard.started(hold_s)  # type: ignore[union-attr]  # _armed implies a guard
        return [f.mount_point for f in self.frozen], skipped

    def _freeze_opened(self, opened: list[tuple[Mount, int]], together: bool) -> list[tuple[str, str]]:
        """FIFREEZE the opened descriptors (at once or in order); return the unsupported ones. FreezeFailed after
        rollback."""
        skipped: list[tuple[str, str]] = []
        if together:
            failures = []
            outcomes = self._fifreeze_together([fd for _, fd in opened])
            for (mount, fd), outcome in zip(opened, outcomes, strict=True):
                failed = self._settle(mount, fd, outcome, skipped)
                if failed is not None:
                    failures.append((mount, failed))
            if failures:
                self._fail(*failures[0])
        else:
            for i, (mount, fd) in enumerate(opened):
                if self.first_freeze_at is None:
                    self.first_freeze_at = time.monotonic()
                failed = self._settle(mount, fd, self._fifreeze(fd), skipped)
                if failed is not None:
                    for _, rest in opened[i + 1:]:
                        os.close(rest)
                    self._fail(mount, failed)
        return skipped

    def _fifreeze(self, fd: int) -> OSError | None:
        """FIFREEZE one descriptor: None, or the error."""
        return self._call(fd, FIFREEZE)

    def _fithaw(self, fd: int) -> OSError | None:
        """FITHAW one descriptor: None, or the error."""
        return self._call(fd, FITHAW)

    def _call(self, fd: int, op: int) -> OSError | None:
        """One freeze ioctl on a descriptor: None, or the error (returned, not raised)."""
        try:
            self._ioctl(fd, op, 0)
        except OSError as exc:
            return exc
        return None

    def _fifreeze_together(self, fds: list[int]) -> list[OSError | None]:
        """FIFREEZE every descriptor at the same time, one thread each (started before the clock, waiting on one
        event): the filesystems' journal commits and cache flushes overlap instead of adding up. A thread whose
        FIFREEZE succeeded stays, waiting to FITHAW its descriptor when thaw() says so (_Thawers): the thaw is
        simultaneous too, with no thread to start while the guest is frozen."""
        go = threading.Event()
        results: list[OSError | None] = [None] * len(fds)
        frozen = [threading.Event() for _ in fds]
        thawers = self._thawers = _Thawers()

        def one(i: int, fd: int) -> None:
            go.wait()
            try:
                results[i] = self._fifreeze(fd)
            finally:
                frozen[i].set()  # whatever happens, freeze() does not wait for this thread forever
            if results[i] is None:
                thawers.go.wait()
                t0 = time.monotonic()
                exc = self._fithaw(fd)
                thawers.results[fd] = (t0, time.monotonic(), exc)

        threads = [threading.Thread(target=one, args=(i, fd), name=f"fifreeze-{i}", daemon=True)
                   for i, fd in enumerate(fds)]
        thawers.threads = threads
        for th in threads:
            th.start()
        self.first_freeze_at = time.monotonic()
        go.set()
        for done in frozen:
            done.wait()
        return results

    def _settle(self, mount: Mount, fd: int, exc: OSError | None, skipped: list[tuple[str, str]]) -> OSError | None:
        """Record one FIFREEZE's outcome: frozen (held), skipped (not supported; closed), or the error to fail with."""
        if exc is None:
            self.frozen.append(FrozenFs(mount.mount_point, fd))
            return None
        os.close(fd)
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            skipped.append((mount.mount_point, f"freezing not supported by {mount.fs_type}"))
            return None
        return exc

    def _fail(self, mount: Mount, exc: OSError) -> NoReturn:
        """Thaw everything frozen so far (reverse order) and raise FreezeFailed for ``mount``'s error."""
        undone = self.thaw()
        raise FreezeFailed(
            f"freezing {mount.mount_point} ({mount.fs_type}) failed: {exc.strerror or exc}; "
            f"thawed again: {[m for m, _ in undone[0]] or 'nothing'}"
            + (f"; thaw errors: {undone[1]}" if undone[1] else "")
        ) from exc

    def _presync(self, fds: list[int]) -> None:
        """Flush every filesystem about to be frozen, before the first FIFREEZE: each FIFREEZE syncs its filesystem
        itself, and whatever it still has to write (and flush through to the host) is time the guest spends frozen.
        A failure here is not an error: the FIFREEZE writes it out."""
        for fd in fds:
            with contextlib.suppress(OSError):
                self._sync(fd)

    def thaw(self) -> tuple[list[tuple[str, int]], list[str]]:
        """Thaw everything held, in reverse freeze order: ([(mount point, ms to thaw)], [errors]).

        Then disarm the guard; ``released_early`` names what was already thawed when we got to it.
        """
        thawed: list[tuple[str, int]] = []
        errors: list[str] = []
        early: list[str] = []
        together, self._thawers = self._thawers, None
        if together is not None:  # the freeze's threads FITHAW their descriptors at once
            together.go.set()
            for th in together.threads:
                th.join()
        while self.frozen:
            fs = self.frozen.pop()
            done = together.results.get(fs.fd) if together is not None else None
            if done is None:  # frozen one by one: thawed here, in reverse order
                t0 = time.monotonic()
                failed = self._fithaw(fs.fd)
                done = (t0, time.monotonic(), failed)
            t0, t1, exc = done
            self.last_thaw_at = max(t1, self.last_thaw_at or t1)
            os.close(fs.fd)
            if exc is None:
                thawed.append((fs.mount_point, int((t1 - t0) * 1000)))
            elif exc.errno == errno.EINVAL:  # not frozen any more (someone else thawed it): already safe
                thawed.append((fs.mount_point, 0))
                early.append(fs.mount_point)
            else:
                errors.append(f"{fs.mount_point}: {exc.strerror or exc}")
        if self._armed:
            self._armed = False
            by_guard = self.guard.disarm()  # type: ignore[union-attr]  # _armed implies a guard
            if by_guard > 0 and not early:
                early = [m for m, _ in thawed]
        self.released_early = early
        return thawed, errors


def _open_checked(mount: Mount) -> int:
    """Open the mount point read-only and check it is still the filesystem the plan named."""
    fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (os.major(st.st_dev), os.minor(st.st_dev)) != mount.dev:
        os.close(fd)
        raise OSError(errno.ESTALE, f"{mount.mount_point} is no longer device {mount.dev[0]}:{mount.dev[1]}")
    return fd
