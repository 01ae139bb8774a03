"""The Linux quiescer: hooks `freeze` -> FIFREEZE (reverse mount order) ... FITHAW -> hooks `thaw`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from agent.exceptions import InvalidRequest, MountNotAllowed
from agent.quiesce import hooks as hooklib
from agent.quiesce import mounts as mountlib
from agent.quiesce.base import Consistency, FreezeOutcome, FsEntry, HookRun, ThawOutcome
from agent.quiesce.fsfreeze import FsFreezer, Guard, IoctlFn


class LinuxQuiescer:
    """Freezes local writable filesystems with FIFREEZE, with application hooks around it."""

    name = "linux-fsfreeze"
    capabilities: tuple[str, ...] = ("fsfreeze", "hooks", "watchdog", "mount-selection")
    max_hold_s: float | None = None

    def __init__(
        self,
        hooks_dir: Path,
        hook_timeout_s: float,
        allowed_mount_points: Sequence[str] = (),
        *,
        mountinfo: Path = Path("/proc/self/mountinfo"),
        ioctl: IoctlFn | None = None,
        guard: Guard | None = None,
        rcu_switch: Path | None = None,
    ) -> None:
        self.hooks_dir = hooks_dir
        self.hook_timeout_s = hook_timeout_s
        self.allowed = tuple(allowed_mount_points)
        self.mountinfo = mountinfo
        self.freezer = FsFreezer(ioctl, guard, rcu_switch=rcu_switch)
        self._hooks_run: list[Path] = []

    def filesystems(self) -> list[FsEntry]:
        """Every mount with its eligibility (reads /proc only: safe while frozen)."""
        out = []
        for m in mountlib.read_mounts(self.mountinfo):
            reason = mountlib.ineligible_reason(m)
            if not reason and self.allowed and m.mount_point not in self.allowed:
                reason = "not in allowed_mount_points"
            out.append(FsEntry(m.mount_point, m.source, m.fs_type, not reason, reason))
        return out

    def hooks(self) -> list[str]:
        """Names of the hooks that will run."""
        return [p.name for p in hooklib.discover_hooks(self.hooks_dir)[0]]

    def freeze(self, mount_points: Sequence[str] | None, hold_s: float = 0.0) -> FreezeOutcome:
        """Run freeze hooks, then freeze (guarded for ``hold_s``); on a failure thaw, run thaw hooks and raise."""
        plan, skipped = self._plan(mount_points)
        hooks, ignored = hooklib.discover_hooks(self.hooks_dir)
        results = [HookRun(n, "freeze", -1, 0, output=f"ignored: {r}") for n, r in ignored]
        self._hooks_run = hooks
        results += hooklib.run_all(hooks, "freeze", self.hook_timeout_s)
        t0 = time.monotonic()
        try:
            frozen, unsupported = self.freezer.freeze(plan, hold_s)
        except Exception:
            hooklib.run_all(list(reversed(hooks)), "thaw", self.hook_timeout_s)
            self._hooks_run = []
            raise
        freeze_ms = int((time.monotonic() - t0) * 1000)
        if not frozen:
            consistency = Consistency.CRASH
        elif hooks and all(r.ok for r in results):
            consistency = Consistency.APPLICATION
        else:
            consistency = Consistency.FILE_SYSTEM
        return FreezeOutcome(frozen, skipped + unsupported, consistency, results, freeze_ms,
                             frozen_at=self.freezer.first_freeze_at if frozen else None)

    def thaw(self) -> ThawOutcome:
        """Thaw in reverse freeze order, then run thaw hooks in reverse name order.

        ``held`` is False when a filesystem was already thawed when we got to it (the thaw guard's deadline or
        someone else ended the freeze early).
        """
        thawed, errors = self.freezer.thaw()
        thawed_at = self.freezer.last_thaw_at
        hook_results = hooklib.run_all(list(reversed(self._hooks_run)), "thaw", self.hook_timeout_s)
        self._hooks_run = []
        early = self.freezer.released_early
        if early:
            errors = [*errors, f"already thawed before the agent's thaw: {early}"]
        return ThawOutcome([m for m, _ in thawed], errors, hook_results, held=not early, thawed_at=thawed_at)

    def _plan(self, mount_points: Sequence[str] | None) -> tuple[list[mountlib.Mount], list[tuple[str, str]]]:
        """The mounts to freeze, in order, and the skipped ones; validate requested mount points."""
        plan, skipped = mountlib.freeze_plan(mountlib.read_mounts(self.mountinfo))
        if self.allowed:
            skipped += [(m.mount_point, "not in allowed_mount_points")
                        for m in plan if m.mount_point not in self.allowed]
            plan = [m for m in plan if m.mount_point in self.allowed]
        if not mount_points:
            return plan, skipped
        wanted = {mountlib.normalize(p) for p in mount_points}
        if self.allowed:
            refused = sorted(wanted - set(self.allowed))
            if refused:
                raise MountNotAllowed(f"not in allowed_mount_points: {refused}")
        known = {m.mount_point for m in plan} | {mp for mp, _ in skipped}
        unknown = sorted(wanted - known)
        if unknown:
            raise InvalidRequest(f"not mount points: {unknown}")
        return [m for m in plan if m.mount_point in wanted], [s for s in skipped if s[0] in wanted]
