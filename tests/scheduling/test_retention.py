"""GFS retention: examples with reasons, and hypothesis properties over synthetic histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policies.model import Retention
from controller.scheduling.retention import PointRecord, newest_good, select_prunable

NOW = datetime(2025, 6, 30, 12, tzinfo=UTC)


def pts(*spec: tuple[float, str]) -> list[PointRecord]:
    """Points from (days ago, consistency)."""
    return [PointRecord(f"p{i:03d}", NOW - timedelta(days=d), c) for i, (d, c) in enumerate(spec)]


def ids(verdicts: list[object]) -> list[str]:
    """Point ids of verdicts."""
    return [v.point.id for v in verdicts]  # type: ignore[attr-defined]


def test_keep_last_and_daily_with_reasons() -> None:
    """keep_last 2 + keep_daily 3 over 4 days with two points a day."""
    history = pts(*((d + h, "FILE_SYSTEM") for d in range(4) for h in (0.0, 0.25)))
    keep, prune = select_prunable(history, Retention(keep_last=2, keep_daily=3), NOW)
    # newest first: p000 (0 d), p001 (0.25 d = same day), p002 (1 d), ...
    assert ids(keep) == ["p000", "p001", "p002", "p004"]
    assert keep[0].reasons[:2] == ("last #1", "daily 2025-06-30")
    assert "newest good point" in keep[0].reasons
    assert ids(prune) == ["p003", "p005", "p006", "p007"]
    assert all(v.reasons == ("not selected by any rule",) for v in prune)


def test_max_age_prunes_even_rule_matches_but_not_newest_good() -> None:
    """max_age 30d overrides keep_monthly; the newest good point survives even when old."""
    history = pts((40, "FILE_SYSTEM"), (70, "APPLICATION"), (100, "FILE_SYSTEM"))
    keep, prune = select_prunable(history, Retention(keep_monthly=12, max_age=timedelta(days=30)), NOW)
    assert ids(keep) == ["p000"] and keep[0].reasons == ("newest good point (always kept)",)
    assert ids(prune) == ["p001", "p002"] and prune[0].reasons == ("older than max age 30d",)


def test_newest_good_skips_crash_points() -> None:
    """The newest non-CRASH point is protected even if newer CRASH points exist and rules would drop it."""
    history = pts((0, "CRASH"), (1, "CRASH"), (2, "FILE_SYSTEM"), (3, "APPLICATION"))
    keep, prune = select_prunable(history, Retention(keep_last=1), NOW)
    assert ids(keep) == ["p000", "p002"]
    assert ids(prune) == ["p001", "p003"]
    assert newest_good(pts((0, "CRASH"), (1, "CRASH"))) is not None


def test_no_rules_keeps_everything_and_empty_history() -> None:
    """Without any rule nothing is pruned; an empty history is fine."""
    history = pts((0, "CRASH"), (500, "CRASH"))
    assert select_prunable(history, Retention(), NOW).prune == []
    assert select_prunable([], Retention(keep_last=1), NOW) == ([], [])


def test_weekly_uses_iso_weeks_and_timezone_days() -> None:
    """ISO week buckets (Sun 2025-06-29 and Mon 2025-06-30 are different weeks); a day is the zone's day."""
    a = PointRecord("a", datetime(2025, 6, 30, 1, tzinfo=UTC), "FILE_SYSTEM")  # Mon
    b = PointRecord("b", datetime(2025, 6, 29, 23, tzinfo=UTC), "FILE_SYSTEM")  # Sun (UTC), Mon in Berlin
    c = PointRecord("c", datetime(2025, 6, 28, 10, tzinfo=UTC), "FILE_SYSTEM")  # Sat
    keep, _ = select_prunable([a, b, c], Retention(keep_weekly=2), NOW)
    assert ids(keep) == ["a", "b"]
    from zoneinfo import ZoneInfo

    keep_b, _ = select_prunable([a, b, c], Retention(keep_daily=2), NOW, tz=ZoneInfo("Europe/Berlin"))
    assert ids(keep_b) == ["a", "c"]  # a and b are the same Berlin day (Monday)


# -- properties --------------------------------------------------------------------------------------------

consistency = st.sampled_from(["CRASH", "FILE_SYSTEM", "APPLICATION"])
history_st = st.lists(st.tuples(st.integers(0, 3 * 365 * 24 * 60), consistency), max_size=60,
                      unique_by=lambda t: t[0]).map(
    lambda xs: [PointRecord(f"p{m:07d}", NOW - timedelta(minutes=m), c) for m, c in xs])
counts = st.integers(0, 6)
retention_st = st.builds(Retention, keep_last=counts, keep_daily=counts, keep_weekly=counts,
                         keep_monthly=counts, keep_yearly=counts,
                         max_age=st.none() | st.integers(1, 800).map(lambda d: timedelta(days=d)))


@settings(max_examples=400, deadline=None)
@given(history=history_st, retention=retention_st)
def test_never_deletes_newest_good_point(history: list[PointRecord], retention: Retention) -> None:
    """The newest non-CRASH point (else the newest) is always kept; keep + prune partition the history."""
    keep, prune = select_prunable(history, retention, NOW)
    assert sorted(ids(keep) + ids(prune)) == sorted(p.id for p in history)
    assert not set(ids(keep)) & set(ids(prune))
    guard = newest_good(history)
    if guard is not None:
        assert guard.id in ids(keep)
    if history:
        assert keep, "a non-empty history never loses every point"


@settings(max_examples=400, deadline=None)
@given(history=history_st, retention=retention_st)
def test_idempotent(history: list[PointRecord], retention: Retention) -> None:
    """Pruning what was kept deletes nothing more."""
    keep, _ = select_prunable(history, retention, NOW)
    again_keep, again_prune = select_prunable([v.point for v in keep], retention, NOW)
    assert again_prune == []
    assert ids(again_keep) == ids(keep)


@settings(max_examples=400, deadline=None)
@given(history=history_st, retention=retention_st)
def test_keeps_exactly_the_counts(history: list[PointRecord], retention: Retention) -> None:
    """Without max_age each rule keeps exactly min(count, periods with points), the newest of each period."""
    retention = Retention(**{**retention.__dict__, "max_age": None})
    keep, _ = select_prunable(history, retention, NOW)
    keys = {"daily": lambda t: t.date(), "weekly": lambda t: t.isocalendar()[:2],
            "monthly": lambda t: (t.year, t.month), "yearly": lambda t: t.year}
    for rule, key in keys.items():
        n = getattr(retention, f"keep_{rule}")
        periods = sorted({key(p.created) for p in history}, reverse=True)[:n]
        tagged = [v for v in keep if any(r.startswith(f"{rule} ") for r in v.reasons)]
        assert len(tagged) == min(n, len({key(p.created) for p in history}))
        for period in periods:
            newest = max((p for p in history if key(p.created) == period), key=lambda p: p.created)
            assert newest.id in ids(tagged)
    last = [v for v in keep if any(r.startswith("last #") for r in v.reasons)]
    assert len(last) == min(retention.keep_last, len(history))
    if retention.has_count_rule:
        # nothing else is kept: every kept point has a rule reason, except at most the newest good point
        extra = [v for v in keep if v.reasons == ("newest good point (always kept)",)]
        assert len(extra) <= 1
