"""Policy YAML parsing: a good file round-trips; each kind of bad file names its exact line and field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controller.policies.exceptions import PolicyInvalid
from controller.policies.parse import parse_file, parse_text, to_yaml

GOOD = """\
# two policies in one file
policies:
  - name: gold
    schedule:
      daily: 22:00            # unquoted: must not become the YAML 1.1 number 1320
      timezone: Europe/Berlin
    retention:
      keep_last: 7
      keep_daily: 7
      keep_weekly: 4
      keep_monthly: 12
      keep_yearly: 2
      max_age: 400d
    consistency: application
    boot_check_every: 7
    limits: {max_concurrent_jobs: 2, bandwidth_mbps: 250.5}
  - name: weekly-dev
    schedule:
      weekly: {days: [Mon, thursday], at: "06:30"}
"""


def test_good_file(tmp_path: Path) -> None:
    """Every field of a full policy is read, with defaults for what is left out."""
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    gold, dev = parse_file(f)
    assert (gold.schedule.kind, gold.schedule.hour, gold.schedule.minute) == ("daily", 22, 0)
    assert gold.schedule.timezone == "Europe/Berlin"
    r = gold.retention
    assert (r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly) == (7, 7, 4, 12, 2)
    assert r.max_age == timedelta(days=400)
    assert gold.min_consistency == "APPLICATION"
    assert (gold.boot_check_every, gold.max_concurrent_jobs, gold.bandwidth_mbps) == (7, 2, 250.5)
    assert dev.schedule.kind == "weekly" and dev.schedule.days == (0, 3)
    assert (dev.schedule.hour, dev.schedule.minute, dev.schedule.timezone) == (6, 30, "UTC")
    assert not dev.retention.has_count_rule and dev.min_consistency is None


def test_multi_document_and_interval_kinds() -> None:
    """Several YAML documents; hourly (short and long form) and every_minutes."""
    text = "name: a\nschedule: {hourly: 4}\n---\nname: b\nschedule: {hourly: {every: 6, minute: 15}}\n" \
           "---\nname: c\nschedule: {every_minutes: 5}\n"
    a, b, c = parse_text(text)
    assert (a.schedule.kind, a.schedule.every, a.schedule.minute) == ("hourly", 4, 0)
    assert (b.schedule.every, b.schedule.minute) == (6, 15)
    assert (c.schedule.kind, c.schedule.every) == ("every_minutes", 5)


def test_round_trip_through_yaml_and_json() -> None:
    """to_yaml and to_dict/from_dict give back the same policy."""
    from controller.policies.model import Policy

    for p in parse_text(GOOD.replace("policies:\n", "policies:\n")):
        assert parse_text(to_yaml(p))[0] == p
        assert Policy.from_dict(p.to_dict()) == p


BAD = [
    # (text, line, field, fragment of the message)
    ("name: x\nschedule:\n  daily: '25:00'\n", 3, "schedule.daily", "00:00 to 23:59"),
    ("name: x\nschedule:\n  daily: '22:00'\n  timezone: Mars/Olympus\n", 4, "schedule.timezone", "IANA"),
    ("name: x\nschedule: {daily: '01:00'}\nretention:\n  keep_last: 3\n  keep_hourly: 2\n", 5,
     "retention.keep_hourly", "allowed: keep_last, keep_daily"),
    ("name: x\nschedule: {daily: '01:00'}\nretention:\n  keep_daily: -1\n", 4, "retention.keep_daily",
     "whole number"),
    ("name: x\nschedule: {daily: '01:00'}\nretention:\n  max_age: 3 months\n", 4, "retention.max_age", "90d"),
    ("name: x\nschedule:\n  weekly:\n    days: [mon, funday]\n    at: '06:00'\n", 4, "schedule.weekly.days",
     "mon, tue"),
    ("name: x\nschedule:\n  weekly: {days: [mon]}\n", 3, "schedule.weekly", "'at'"),
    ("name: x\nschedule:\n  daily: '01:00'\n  hourly: 2\n", 4, "schedule", "exactly one"),
    ("name: x\nschedule:\n  timezone: UTC\n", 3, "schedule", "exactly one of daily, weekly"),
    ("schedule: {daily: '01:00'}\n", 1, "name", "required"),
    ("name: x\n", 1, "schedule", "required"),
    ("name: 'bad name!'\nschedule: {daily: '01:00'}\n", 1, "name", "letters, digits"),
    ("name: x\nschedule: {daily: '01:00'}\nconsistency: SORT_OF\n", 3, "consistency",
     "APPLICATION, FILE_SYSTEM, CRASH"),
    ("name: x\nschedule: {every_minutes: 0}\n", 2, "schedule.every_minutes", "from 1 to 1440"),
    ("name: x\nschedule: {daily: '01:00'}\nlimits:\n  bandwidth_mbps: fast\n", 4, "limits.bandwidth_mbps",
     "positive number"),
    ("name: x\nschedule: {daily: '01:00'}\nboot_check_every: 0\n", 3, "boot_check_every", "from 1"),
    ("name: x\nschedule: {daily: '01:00'}\nname: y\n", 3, "name", "given twice"),
    ("name: x\nschedule: {daily: '01:00'}\n---\nname: x\nschedule: {daily: '02:00'}\n", 4, "name",
     "defined twice"),
]


@pytest.mark.parametrize(("text", "line", "field", "fragment"), BAD)
def test_bad_file_names_line_and_field(tmp_path: Path, text: str, line: int, field: str, fragment: str) -> None:
    """Each bad file: POLICY_INVALID with 'FILE:LINE: field ...' and what is allowed."""
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PolicyInvalid) as ei:
        parse_file(f)
    e = ei.value
    assert e.code == "POLICY_INVALID"
    assert (e.details["file"], e.details["line"], e.details["field"]) == (str(f), line, field)
    assert e.message.startswith(f"{f}:{line}: field {field!r}: ")
    assert fragment in e.message


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported with its line."""
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nschedule:\n  daily: '01:00'\n  timezone: [UTC\n")
    with pytest.raises(PolicyInvalid) as ei:
        parse_file(f)
    assert ei.value.details["line"] >= 4 and "not valid YAML" in ei.value.message


def test_missing_file_and_empty_text(tmp_path: Path) -> None:
    """Unreadable file and a file with no policy are clear errors too."""
    with pytest.raises(PolicyInvalid, match="cannot read"):
        parse_file(tmp_path / "nope.yaml")
    with pytest.raises(PolicyInvalid, match="no policy found"):
        parse_text("# nothing\n", "empty.yaml")
