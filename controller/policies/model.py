"""Policy records: schedule, retention, consistency floor, boot-check cadence and limits.

A policy is plain data; :mod:`controller.policies.parse` builds it from YAML (with line-precise errors) and
:mod:`controller.policies.store` keeps it in the state DB as the YAML text plus ``to_dict()`` JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from controller.vault import compress

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_KINDS = ("daily", "weekly", "hourly", "every_minutes")


@dataclass(frozen=True)
class Schedule:
    """When backups run.

    ``daily``/``weekly`` are wall-clock times in ``timezone``; ``hourly`` (every N hours at minute M) and
    ``every_minutes`` are fixed elapsed intervals aligned to the UNIX epoch (UTC), so DST never changes them.
    """

    kind: str
    hour: int = 0
    minute: int = 0
    days: tuple[int, ...] = ()  # weekly: 0 = Monday
    every: int = 0  # hourly: hours; every_minutes: minutes
    timezone: str = "UTC"

    def describe(self) -> str:
        """A short human description, e.g. 'daily 22:00 Europe/Berlin'."""
        hm = f"{self.hour:02d}:{self.minute:02d}"
        if self.kind == "daily":
            return f"daily {hm} {self.timezone}"
        if self.kind == "weekly":
            return f"weekly {','.join(WEEKDAYS[d] for d in self.days)} {hm} {self.timezone}"
        if self.kind == "hourly":
            return f"every {self.every}h at :{self.minute:02d}"
        return f"every {self.every} min"

    def to_dict(self) -> dict[str, Any]:
        """JSON view (the stored parsed form)."""
        return {
            "kind": self.kind,
            "hour": self.hour,
            "minute": self.minute,
            "days": list(self.days),
            "every": self.every,
            "timezone": self.timezone,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        """Inverse of to_dict."""
        return cls(
            d["kind"], int(d["hour"]), int(d["minute"]), tuple(d["days"]), int(d["every"]), d["timezone"]
        )


@dataclass(frozen=True)
class Retention:
    """Which recovery points to keep (GFS); 0 means the rule is off. No rule at all keeps everything."""

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    max_age: timedelta | None = None

    @property
    def has_count_rule(self) -> bool:
        """True when any keep_* count is set."""
        return any((self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly))

    def describe(self) -> str:
        """e.g. 'last 7, daily 7, weekly 4, max age 90d'."""
        parts = [
            f"{k} {v}"
            for k, v in (
                ("last", self.keep_last),
                ("daily", self.keep_daily),
                ("weekly", self.keep_weekly),
                ("monthly", self.keep_monthly),
                ("yearly", self.keep_yearly),
            )
            if v
        ]
        if self.max_age is not None:
            parts.append(f"max age {format_duration(self.max_age)}")
        return ", ".join(parts) or "keep everything"

    def to_dict(self) -> dict[str, Any]:
        """JSON view; max_age in seconds."""
        return {
            "keep_last": self.keep_last,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "keep_yearly": self.keep_yearly,
            "max_age_s": None if self.max_age is None else int(self.max_age.total_seconds()),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Retention:
        """Inverse of to_dict."""
        age = d.get("max_age_s")
        return cls(
            int(d["keep_last"]),
            int(d["keep_daily"]),
            int(d["keep_weekly"]),
            int(d["keep_monthly"]),
            int(d["keep_yearly"]),
            None if age is None else timedelta(seconds=int(age)),
        )


@dataclass(frozen=True)
class Policy:
    """One named backup policy."""

    name: str
    schedule: Schedule
    retention: Retention = field(default_factory=Retention)
    min_consistency: str | None = None
    boot_check_every: int | None = None
    max_concurrent_jobs: int | None = None
    bandwidth_mbps: float | None = None
    exclude_disks: tuple[str, ...] = ()  # device targets a backup does not copy (listed in the manifest)
    full_every: str | None = None  # a periodic full: "7" (every 7th backup) or "7d" (7 days); None: incremental forever
    protect_newest: int = 0  # the newest N good points of each VM are protected (controller/vault/protect.py)
    compression: str = compress.DEFAULT  # "zstd" | "none": stored images compressed where it pays (vault/compress.py)

    def describe_chain(self) -> str:
        """How often a backup is a full, e.g. 'full every 7 backups' or 'incremental forever'."""
        return describe_full_every(self.full_every)

    def to_dict(self) -> dict[str, Any]:
        """JSON view (stored beside the YAML text)."""
        return {
            "name": self.name,
            "schedule": self.schedule.to_dict(),
            "retention": self.retention.to_dict(),
            "min_consistency": self.min_consistency,
            "boot_check_every": self.boot_check_every,
            "limits": {
                "max_concurrent_jobs": self.max_concurrent_jobs,
                "bandwidth_mbps": self.bandwidth_mbps,
            },
            "exclude_disks": list(self.exclude_disks),
            "full_every": self.full_every,
            "protect_newest": self.protect_newest,
            "compression": self.compression,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        """Inverse of to_dict."""
        lim = d.get("limits") or {}
        return cls(
            d["name"],
            Schedule.from_dict(d["schedule"]),
            Retention.from_dict(d["retention"]),
            d.get("min_consistency"),
            d.get("boot_check_every"),
            lim.get("max_concurrent_jobs"),
            lim.get("bandwidth_mbps"),
            tuple(d.get("exclude_disks") or ()),
            d.get("full_every"),
            protect_newest=int(d.get("protect_newest") or 0),
            compression=str(d.get("compression") or compress.DEFAULT),
        )


def describe_full_every(full_every: str | None) -> str:
    """Human text of a policy's full_every ("7" backups or "7d" days; None: incremental forever)."""
    if not full_every:
        return "incremental forever"
    if full_every.endswith("d"):
        n = int(full_every[:-1])
        return f"full every {n} day{'s' if n != 1 else ''}"
    n = int(full_every)
    return "full every backup" if n == 1 else f"full every {n} backups"


def format_duration(td: timedelta) -> str:
    """A duration in the largest exact unit of d/h/m/s, e.g. 90d, 36h."""
    s = int(td.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"
