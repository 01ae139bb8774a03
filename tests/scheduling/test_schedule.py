"""next_run / due / plan: wall-clock schedules across DST in several zones, interval schedules, missed runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policies.model import Schedule
from controller.scheduling.exceptions import NaiveDatetime
from controller.scheduling.schedule import Bound, due, next_run, plan

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*a: int) -> datetime:
    """A UTC datetime."""
    return datetime(*a, tzinfo=UTC)  # type: ignore[misc]


def runs(s: Schedule, start: datetime, n: int) -> list[datetime]:
    """The next n runs after start."""
    out, t = [], start
    for _ in range(n):
        t = next_run(s, t)
        out.append(t)
    return out


def test_daily_berlin_spring_forward_runs_at_0330_local() -> None:
    """2025-03-30 02:30 does not exist in Berlin: the run happens at 03:30 CEST (01:30 UTC), not skipped."""
    s = Schedule("daily", 2, 30, timezone="Europe/Berlin")
    got = runs(s, utc(2025, 3, 28, 12), 3)
    assert got == [utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 30), utc(2025, 3, 31, 0, 30)]
    assert got[1].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"
    assert got[2].astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"


def test_daily_berlin_fall_back_runs_once() -> None:
    """2025-10-26 02:30 happens twice in Berlin: one run, at the first (CEST) occurrence."""
    s = Schedule("daily", 2, 30, timezone="Europe/Berlin")
    got = runs(s, utc(2025, 10, 25, 12), 3)
    assert got == [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30), utc(2025, 10, 28, 1, 30)]
    on_day = [t for t in got if t.astimezone(BERLIN).date().isoformat() == "2025-10-26"]
    assert len(on_day) == 1
    # even asked from between the two occurrences, the second one is not a run
    assert next_run(s, utc(2025, 10, 26, 0, 45)) == utc(2025, 10, 27, 1, 30)


@pytest.mark.parametrize(
    ("zone", "day", "hm", "expect_utc"),
    [
        ("America/New_York", (2025, 3, 9), (2, 30), utc(2025, 3, 9, 7, 30)),  # gap 02:00-03:00 EST->EDT
        ("America/New_York", (2025, 11, 2), (1, 30), utc(2025, 11, 2, 5, 30)),  # 01:30 twice: first (EDT)
        ("Australia/Sydney", (2025, 10, 5), (2, 30), utc(2025, 10, 4, 16, 30)),  # southern spring gap
        ("Australia/Lord_Howe", (2025, 10, 5), (2, 15), utc(2025, 10, 4, 15, 45)),  # 30-minute DST gap
        ("Asia/Kolkata", (2025, 3, 30), (2, 30), utc(2025, 3, 29, 21, 0)),  # +05:30, no DST
        ("UTC", (2025, 3, 30), (2, 30), utc(2025, 3, 30, 2, 30)),
    ],
)
def test_daily_in_several_zones(zone: str, day: tuple[int, int, int], hm: tuple[int, int], expect_utc: datetime
                                ) -> None:
    """The run on a DST (or ordinary) day lands on the documented instant."""
    s = Schedule("daily", hm[0], hm[1], timezone=zone)
    start = datetime(*day, tzinfo=ZoneInfo(zone)) - timedelta(hours=6)
    assert next_run(s, start) == expect_utc


def test_weekly_picks_listed_days_only() -> None:
    """Weekly mon+thu 06:00 UTC."""
    s = Schedule("weekly", 6, 0, days=(0, 3))
    got = runs(s, utc(2025, 6, 2, 6, 0), 4)  # Monday 06:00 exactly: strictly after
    assert [t.strftime("%a %H:%M") for t in got] == ["Thu 06:00", "Mon 06:00", "Thu 06:00", "Mon 06:00"]
    assert got[0] == utc(2025, 6, 5, 6)


def test_interval_schedules_ignore_dst() -> None:
    """hourly every 4 h at :15 and every_minutes are fixed elapsed intervals, even across a DST change."""
    s = Schedule("hourly", minute=15, every=4, timezone="Europe/Berlin")
    got = runs(s, utc(2025, 3, 29, 22), 4)
    assert got == [utc(2025, 3, 30, 0, 15), utc(2025, 3, 30, 4, 15), utc(2025, 3, 30, 8, 15),
                   utc(2025, 3, 30, 12, 15)]
    m = Schedule("every_minutes", every=7)
    gaps = {b - a for a, b in zip(runs(m, utc(2025, 1, 1), 50), runs(m, utc(2025, 1, 1), 51)[1:], strict=False)}
    assert gaps == {timedelta(minutes=7)}


zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
                         "America/Santiago"])
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(zone=zones, hour=st.integers(0, 23), minute=st.integers(0, 59), after=instants)
def test_daily_properties(zone: str, hour: int, minute: int, after: datetime) -> None:
    """next_run is strictly later, within ~25 h, and the wall clock shows the time (or the gap-shifted time)."""
    s = Schedule("daily", hour, minute, timezone=zone)
    t = next_run(s, after)
    assert after < t <= after + timedelta(hours=26)
    local = t.astimezone(ZoneInfo(zone))
    shown = local.hour * 60 + local.minute
    # equal, or shifted forward by the DST gap (at most 1 h, 30 min on Lord Howe)
    assert 0 <= (shown - (hour * 60 + minute)) % (24 * 60) <= 60
    # t is also the next run seen from just before it (no overshoot past a slot)
    assert next_run(s, after) == next_run(s, t - timedelta(microseconds=1))


def test_naive_datetime_refused() -> None:
    """A naive time is a typed error, not a silent local-time guess."""
    with pytest.raises(NaiveDatetime):
        next_run(Schedule("daily", 1, 0), datetime(2025, 1, 1))


def test_due_runs_missed_slots_once() -> None:
    """Service down for 3 days with a daily schedule: due once now; after running, not due again until next slot."""
    s = Schedule("daily", 22, 0)
    last = utc(2025, 5, 1, 22, 0, 5)
    now = utc(2025, 5, 4, 23, 0)
    assert due(s, now, last, since=utc(2025, 1, 1)) == utc(2025, 5, 2, 22)
    ran_at = now + timedelta(minutes=1)
    assert due(s, now + timedelta(minutes=30), ran_at, since=utc(2025, 1, 1)) is None
    assert due(s, utc(2025, 5, 5, 22), ran_at, since=utc(2025, 1, 1)) == utc(2025, 5, 5, 22)


def test_due_first_run_is_anchored_at_protection_time() -> None:
    """A newly protected VM waits for its first slot after `since` (no backup for slots before protection)."""
    s = Schedule("daily", 22, 0)
    since = utc(2025, 5, 1, 23)
    assert due(s, utc(2025, 5, 2, 21), None, since) is None
    assert due(s, utc(2025, 5, 2, 22, 1), None, since) == utc(2025, 5, 2, 22)


def test_plan_coalesces_missed_and_lists_upcoming() -> None:
    """plan: one due run per VM with the missed count, then the upcoming runs within the horizon."""
    daily = Bound("u1", "web1", "gold", Schedule("daily", 22, 0), since=utc(2025, 1, 1))
    fast = Bound("u2", "db1", "fast", Schedule("every_minutes", every=30), since=utc(2025, 1, 1))
    now = utc(2025, 5, 4, 23, 0)
    out = plan([daily, fast], {"u1": utc(2025, 5, 1, 22, 0, 5), "u2": utc(2025, 5, 4, 22, 40)}, now,
               horizon=timedelta(hours=2))
    due_runs = [r for r in out if r.due]
    assert [(r.vm_name, r.at, r.missed) for r in due_runs] == [("web1", utc(2025, 5, 2, 22), 2),
                                                                ("db1", utc(2025, 5, 4, 23, 0), 0)]
    upcoming = [(r.vm_name, r.at) for r in out if not r.due]
    assert upcoming == [("db1", utc(2025, 5, 4, 23, 30)), ("db1", utc(2025, 5, 5, 0, 0)),
                        ("db1", utc(2025, 5, 5, 0, 30)), ("db1", utc(2025, 5, 5, 1, 0))]
