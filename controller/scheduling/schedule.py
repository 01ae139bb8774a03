"""When backups run: ``next_run``, ``due`` and ``plan``.

Rules (tested in tests/scheduling/test_schedule.py):

- ``daily`` / ``weekly`` are wall-clock times in the policy's time zone (zoneinfo). All results are UTC-aware.
- A wall-clock time that does not exist (spring forward: 02:30 in Europe/Berlin on the last Sunday of
  March) is **not skipped**: the run happens as long after the gap starts as the time says, i.e. at 03:30
  local (01:30 UTC); this is what PEP 495 ``fold=0`` gives and what cron does for jobs in the skipped hour.
- A wall-clock time that exists twice (fall back: 02:30 on the last Sunday of October) runs **once**, at its
  first occurrence (CEST, ``fold=0``).
- ``hourly`` (every N hours at minute M) and ``every_minutes`` are fixed elapsed intervals aligned to the UNIX
  epoch in UTC, so DST never shortens or stretches them (the time zone is ignored for them).
- Missed runs (the service was down): ``due`` returns the first missed slot once; the next run is computed
  from the time the run actually happened, so N missed slots give one run, not N.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from controller.policies.model import Schedule
from controller.scheduling.exceptions import NaiveDatetime

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Upper bound of slots listed per VM by plan() (and counted as missed).
MAX_SLOTS = 1000


def _aware(t: datetime, what: str) -> datetime:
    """t itself, or NaiveDatetime if it has no time zone."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise NaiveDatetime(f"{what} must be timezone-aware, got {t.isoformat()}")
    return t


def local_instant(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock day hour:minute in tz (gap: shifted forward; repeat: first one)."""
    return datetime.combine(day, time(hour, minute), tzinfo=tz).replace(fold=0).astimezone(UTC)


def _interval_next(period_s: int, offset_s: int, after: datetime) -> datetime:
    """The first epoch-aligned slot (k * period + offset) strictly after `after`."""
    secs = (after - EPOCH) // timedelta(seconds=1)
    k = (secs - offset_s) // period_s + 1
    return EPOCH + timedelta(seconds=k * period_s + offset_s)


def next_run(schedule: Schedule, after: datetime) -> datetime:
    """The first scheduled instant strictly after `after` (UTC-aware)."""
    after = _aware(after, "after")
    if schedule.kind == "hourly":
        return _interval_next(schedule.every * 3600, schedule.minute * 60, after)
    if schedule.kind == "every_minutes":
        return _interval_next(schedule.every * 60, 0, after)
    tz = ZoneInfo(schedule.timezone)
    start = after.astimezone(tz).date() - timedelta(days=1)
    for i in range(16):
        day = start + timedelta(days=i)
        if schedule.kind == "weekly" and day.weekday() not in schedule.days:
            continue
        cand = local_instant(day, schedule.hour, schedule.minute, tz)
        if cand > after:
            return cand
    raise AssertionError(f"no run within 16 days for {schedule.describe()}")  # unreachable: days is non-empty


def due(schedule: Schedule, now: datetime, last_run: datetime | None, since: datetime) -> datetime | None:
    """The slot to run now (the first one missed since last_run, or since protection began), or None."""
    nxt = next_run(schedule, _aware(last_run, "last_run") if last_run is not None else _aware(since, "since"))
    return nxt if nxt <= _aware(now, "now") else None


@dataclass(frozen=True)
class Bound:
    """A protected VM with its policy's schedule: the input of plan()."""

    vm_uuid: str
    vm_name: str
    policy: str
    schedule: Schedule
    since: datetime


@dataclass(frozen=True)
class PlannedRun:
    """One backup run: due now (at <= now; `missed` extra slots coalesced into it) or upcoming."""

    vm_uuid: str
    vm_name: str
    policy: str
    at: datetime
    due: bool
    missed: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON view."""
        return {
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "policy": self.policy,
            "at": self.at.isoformat(),
            "due": self.due,
            "missed": self.missed,
        }


def plan(
    protections: Iterable[Bound],
    last_runs: Mapping[str, datetime],
    now: datetime,
    horizon: timedelta = timedelta(0),
) -> list[PlannedRun]:
    """Due runs (one per VM, however many slots were missed) and the runs up to now + horizon, by time."""
    now = _aware(now, "now")
    out: list[PlannedRun] = []
    for b in protections:
        anchor = last_runs.get(b.vm_uuid) or b.since
        slot = next_run(b.schedule, anchor)
        missed = -1
        first_due = slot
        while slot <= now and missed < MAX_SLOTS:
            missed += 1
            slot = next_run(b.schedule, slot)
        if missed >= 0:
            out.append(PlannedRun(b.vm_uuid, b.vm_name, b.policy, first_due, True, missed))
            slot = next_run(b.schedule, now)  # after the catch-up run the schedule resumes from now
        listed = 0
        while slot <= now + horizon and listed < MAX_SLOTS:
            out.append(PlannedRun(b.vm_uuid, b.vm_name, b.policy, slot, False))
            slot = next_run(b.schedule, slot)
            listed += 1
    return sorted(out, key=lambda r: (not r.due, r.at, r.vm_name))
