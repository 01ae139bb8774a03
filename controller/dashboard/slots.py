"""``next_run`` for many VMs of few policies: consecutive slots are computed once per schedule and bisected.

A schedule's slots are a fixed set of instants (wall-clock times of each day, or epoch-aligned intervals), so
for ``known[i] <= after < known[i + 1]`` of consecutive slots, ``next_run(schedule, after)`` is ``known[i + 1]``.
The dashboard asks this twice per protected VM; with 10,000 VMs on four daily/weekly policies the zoneinfo work
of ``next_run`` was most of its time. Usage::

    slots = SlotCache(schedule)
    slots.next_after(t)            # == scheduling.schedule.next_run(schedule, t), for any aware t
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime

from controller.policies.model import Schedule
from controller.scheduling.schedule import next_run

#: At most this many slots are kept per schedule (beyond, next_after computes directly).
MAX_KNOWN = 4096


class SlotCache:
    """Consecutive slots of one schedule, from the first asked-for instant on (see the module docstring)."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.floor: datetime | None = None  # no slot lies strictly between floor and known[0]
        self.known: list[datetime] = []

    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after `after` (UTC-aware), as next_run gives it."""
        if self.floor is None:
            self.floor, self.known = after, [next_run(self.schedule, after)]
        if after < self.floor:
            return next_run(self.schedule, after)
        while self.known[-1] <= after:
            if len(self.known) >= MAX_KNOWN:
                return next_run(self.schedule, after)
            self.known.append(next_run(self.schedule, self.known[-1]))
        return self.known[bisect_right(self.known, after)]
