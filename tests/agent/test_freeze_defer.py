"""The Freeze reply leaves before the watchdog's thread is started and the freeze is logged (issue #16): the
manager hands that work to ``defer`` (the RPC's add_callback). Host-only, with a fake quiescer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.freeze import FreezeManager
from agent.quiesce.base import Consistency, FreezeOutcome, FsEntry, ThawOutcome


class FakeQuiescer:
    """Counts freezes and thaws; freezes one pretend filesystem."""

    name = "fake"
    capabilities: tuple[str, ...] = ()
    max_hold_s: float | None = None

    def __init__(self) -> None:
        self.thaws = 0

    def filesystems(self) -> list[FsEntry]:
        return []

    def hooks(self) -> list[str]:
        return []

    def freeze(self, mount_points: Sequence[str] | None, hold_s: float = 0.0) -> FreezeOutcome:
        return FreezeOutcome(["/data"], [], Consistency.FILE_SYSTEM, frozen_at=time.monotonic())

    def thaw(self) -> ThawOutcome:
        self.thaws += 1
        return ThawOutcome(["/data"], thawed_at=time.monotonic())


def collector(later: list[Callable[[], None]]) -> Callable[[Callable[[], None]], bool]:
    """A ``defer`` that keeps the work for the test to run."""
    def defer(fn: Callable[[], None]) -> bool:
        later.append(fn)
        return True
    return defer


def test_deferred_watchdog_starts_only_when_called_and_counts_from_the_freeze() -> None:
    """Nothing is started before the deferred work runs; once it runs, the watchdog still auto-thaws on time."""
    q = FakeQuiescer()
    m = FreezeManager(q, 10.0, 60.0)
    later: list[Callable[[], None]] = []
    token, session = m.freeze(None, 0.5, "job-a", defer=collector(later))
    assert len(later) == 1 and q.thaws == 0
    time.sleep(0.6)  # the deferred work runs after the 0.5 s timeout has already passed
    assert q.thaws == 0
    later[0]()
    assert session.done.wait(5.0), "the watchdog did not thaw"
    waited = session.ended_at - session.frozen_at
    assert 0.5 <= waited < 1.05, waited  # at once: 0.5 s counted from the freeze, not from the deferred start
    r = m.thaw(token)
    assert r.auto_thawed and q.thaws == 1


def test_a_defer_that_cannot_take_it_runs_it_at_once() -> None:
    """defer returning False (the RPC already ended): the watchdog is armed before freeze() returns."""
    q = FakeQuiescer()
    m = FreezeManager(q, 10.0, 60.0)
    token, session = m.freeze(None, 0.3, "job-b", defer=lambda fn: False)
    assert session.done.wait(5.0), "no watchdog was armed"
    assert m.thaw(token).auto_thawed and q.thaws == 1


def test_thaw_before_the_deferred_work_ends_cleanly() -> None:
    """A Thaw that overtakes the deferred start: the late watchdog sees the session ended and never thaws again."""
    q = FakeQuiescer()
    m = FreezeManager(q, 10.0, 60.0)
    later: list[Callable[[], None]] = []
    token, _ = m.freeze(None, 0.2, "job-c", defer=collector(later))
    assert m.thaw(token).held
    later[0]()
    time.sleep(0.4)
    assert q.thaws == 1
