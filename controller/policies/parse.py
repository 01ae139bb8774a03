"""Policy YAML: parse and validate, with errors that name the file, line, field and what is allowed.

A file holds one policy, several YAML documents (``---``), or ``policies: [ ... ]``::

    name: gold
    schedule:
      daily: "22:00"                 # or weekly: {days: [mon, thu], at: "06:00"} | hourly: 4
      timezone: Europe/Berlin        #    | hourly: {every: 4, minute: 15} | every_minutes: 5
    retention: {keep_last: 7, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_yearly: 2, max_age: 90d}
    consistency: FILE_SYSTEM         # minimum: APPLICATION | FILE_SYSTEM | CRASH (weaker fails the job)
    boot_check_every: 7              # boot-check every 7th point (optional)
    limits: {max_concurrent_jobs: 2, bandwidth_mbps: 100}
    exclude_disks: [vdc, share]      # devices not backed up, by target (disk, filesystem tag, hostdev alias)
    full_every: 7d                   # a periodic full: 7 (every 7th backup) or 7d (days); default: incremental forever
    protect_newest: 3                # the newest 3 good points of each VM cannot be deleted or pruned (default 0)
    compression: zstd                # stored images: zstd (default; where it pays) | none

The tree comes from ``yaml.compose`` so every value keeps its line, and scalars are read from their source
text (an unquoted ``22:00`` is not turned into the YAML 1.1 sexagesimal 1320).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml

from agent.contract import CONSISTENCY_LEVELS
from controller.policies.exceptions import PolicyInvalid
from controller.policies.model import (
    WEEKDAYS,
    Policy,
    Retention,
    Schedule,
    format_duration,
)
from controller.vault import compress
from controller.vault.manifest import COMPRESSIONS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
AGE_RE = re.compile(r"^(\d+)\s*([smhdw])$")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TOP_FIELDS = (
    "name", "schedule", "retention", "consistency", "boot_check_every", "limits", "exclude_disks", "full_every",
    "protect_newest", "compression",
)
#: a device target to exclude: a disk target (vdc, sdb), a <filesystem> target tag, a hostdev alias (hostdev0)
EXCLUDE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RETENTION_FIELDS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "max_age")
LIMIT_FIELDS = ("max_concurrent_jobs", "bandwidth_mbps")
FULL_EVERY_RE = re.compile(r"^(\d+)\s*(d?)$")
MAX_FULL_EVERY_BACKUPS = 10000
MAX_FULL_EVERY_DAYS = 3650


class _Src:
    """Where the YAML came from; builds the precise errors."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, node: yaml.Node, field: str, problem: str) -> PolicyInvalid:
        """An error at node's line: 'FILE:LINE: field FIELD: PROBLEM'."""
        line = node.start_mark.line + 1
        return PolicyInvalid(
            f"{self.source}:{line}: field {field!r}: {problem}",
            details={"file": self.source, "line": line, "field": field},
        )

    def mapping(self, node: yaml.Node, field: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        """A mapping node as {key: value node}; unknown or duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, field, f"must be a mapping with keys {', '.join(allowed)}")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = str(k.value)
            where = f"{field}.{key}" if field else key
            if key not in allowed:
                raise self.fail(k, where, f"unknown field; allowed: {', '.join(allowed)}")
            if key in out:
                raise self.fail(k, where, "given twice")
            out[key] = v
        return out

    def scalar(self, node: yaml.Node, field: str) -> str:
        """A scalar's source text."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, field, "must be a single value")
        return str(node.value).strip()

    def integer(self, node: yaml.Node, field: str, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        text = self.scalar(node, field)
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise self.fail(node, field, f"got {text!r}; allowed: a whole number from {lo} to {hi}")
        return int(text)

    def number(self, node: yaml.Node, field: str) -> float:
        """A positive number."""
        text = self.scalar(node, field)
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or value != value or value == float("inf"):
            raise self.fail(node, field, f"got {text!r}; allowed: a positive number")
        return value

    def clock(self, node: yaml.Node, field: str) -> tuple[int, int]:
        """HH:MM (24 h)."""
        text = self.scalar(node, field)
        m = TIME_RE.match(text)
        if not m:
            raise self.fail(node, field, f"got {text!r}; allowed: a time HH:MM from 00:00 to 23:59")
        return int(m.group(1)), int(m.group(2))


def parse_text(text: str, source: str = "<text>") -> list[Policy]:
    """Every policy in a YAML text (one document, several documents, or a `policies:` list)."""
    src = _Src(source)
    try:
        docs = [d for d in yaml.compose_all(text) if d is not None]
    except yaml.reader.ReaderError as e:  # a control character YAML does not allow (NUL, BEL, ...)
        line = text.count("\n", 0, e.position) + 1
        raise PolicyInvalid(
            f"{source}:{line}: not valid YAML: control character #x{e.character:04x} "
            "is not allowed in a policy file",
            details={"file": source, "line": line, "field": None},
        ) from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise PolicyInvalid(
            f"{source}:{line}: not valid YAML: {e.problem or e}",
            details={"file": source, "line": line, "field": None},
        ) from e
    nodes: list[yaml.Node] = []
    for doc in docs:
        if isinstance(doc, yaml.MappingNode) and [k.value for k, _ in doc.value] == ["policies"]:
            lst = doc.value[0][1]
            if not isinstance(lst, yaml.SequenceNode):
                raise src.fail(lst, "policies", "must be a list of policies")
            nodes.extend(lst.value)
        else:
            nodes.append(doc)
    if not nodes:
        raise PolicyInvalid(
            f"{source}:1: no policy found", details={"file": source, "line": 1, "field": None}
        )
    policies = [_policy(src, n) for n in nodes]
    seen: set[str] = set()
    for n, p in zip(nodes, policies, strict=True):
        if p.name in seen:
            raise src.fail(n, "name", f"policy {p.name!r} defined twice in this file")
        seen.add(p.name)
    return policies


def parse_file(path: Path | str) -> list[Policy]:
    """Every policy in a YAML file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PolicyInvalid(f"{p}: cannot read: {e.strerror or e}", details={"file": str(p)}) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PolicyInvalid(
            f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
            details={"file": str(p), "line": line, "field": None},
        ) from e
    return parse_text(text, str(p))


def _policy(src: _Src, node: yaml.Node) -> Policy:
    """One policy mapping."""
    f = src.mapping(node, "", TOP_FIELDS)
    for req in ("name", "schedule"):
        if req not in f:
            raise src.fail(node, req, "is required")
    name = src.scalar(f["name"], "name")
    if not NAME_RE.match(name):
        raise src.fail(f["name"], "name", f"got {name!r}; allowed: letters, digits, '_', '.', '-' (max 63)")
    consistency = None
    if "consistency" in f:
        consistency = src.scalar(f["consistency"], "consistency").upper()
        if consistency not in CONSISTENCY_LEVELS:
            raise src.fail(
                f["consistency"],
                "consistency",
                f"got {consistency!r}; allowed: {', '.join(reversed(CONSISTENCY_LEVELS))}",
            )
    boot = (
        src.integer(f["boot_check_every"], "boot_check_every", 1, 10000) if "boot_check_every" in f else None
    )
    mcj, bw = None, None
    if "limits" in f:
        lim = src.mapping(f["limits"], "limits", LIMIT_FIELDS)
        if "max_concurrent_jobs" in lim:
            mcj = src.integer(lim["max_concurrent_jobs"], "limits.max_concurrent_jobs", 1, 64)
        if "bandwidth_mbps" in lim:
            bw = src.number(lim["bandwidth_mbps"], "limits.bandwidth_mbps")
    retention = _retention(src, f["retention"]) if "retention" in f else Retention()
    exclude = _exclude_disks(src, f["exclude_disks"]) if "exclude_disks" in f else ()
    full_every = _full_every(src, f["full_every"]) if "full_every" in f else None
    protect_newest = src.integer(f["protect_newest"], "protect_newest", 0, 1000) if "protect_newest" in f else 0
    comp = _compression(src, f["compression"]) if "compression" in f else compress.DEFAULT
    return Policy(name, _schedule(src, f["schedule"]), retention, consistency, boot, mcj, bw, exclude, full_every,
                  protect_newest=protect_newest, compression=comp)


def _compression(src: _Src, node: yaml.Node) -> str:
    """compression: one of manifest.COMPRESSIONS (zstd: compressed where it pays; none: never)."""
    text = src.scalar(node, "compression").lower()
    if text not in COMPRESSIONS:
        raise src.fail(
            node,
            "compression",
            f"got {text!r}; allowed: {' or '.join(COMPRESSIONS)} (zstd, the default, compresses the stored images "
            "where that pays; none stores them uncompressed)",
        )
    return text


def _full_every(src: _Src, node: yaml.Node) -> str:
    """full_every: N (a full every Nth backup) or Nd (a full when the chain's full is N days old), normalized."""
    text = src.scalar(node, "full_every")
    m = FULL_EVERY_RE.match(text.lower())
    hi = MAX_FULL_EVERY_DAYS if m and m.group(2) else MAX_FULL_EVERY_BACKUPS
    if not m or not 1 <= int(m.group(1)) <= hi:
        raise src.fail(
            node,
            "full_every",
            f"got {text!r}; allowed: a number of backups from 1 to {MAX_FULL_EVERY_BACKUPS} (e.g. 7: every 7th "
            f"backup is a full) or of days from 1d to {MAX_FULL_EVERY_DAYS}d (e.g. 7d: a full once the chain's "
            "full is 7 days old); leave it out for incremental forever",
        )
    return f"{int(m.group(1))}{m.group(2)}"


def _exclude_disks(src: _Src, node: yaml.Node) -> tuple[str, ...]:
    """exclude_disks: a list of distinct device targets."""
    if not isinstance(node, yaml.SequenceNode):
        raise src.fail(node, "exclude_disks", "must be a list of device targets, e.g. [vdc, sdb]")
    out: list[str] = []
    for item in node.value:
        target = src.scalar(item, "exclude_disks")
        if not EXCLUDE_RE.match(target):
            raise src.fail(
                item, "exclude_disks", f"got {target!r}; allowed: a device target such as vdc, sdb or hostdev0"
            )
        if target in out:
            raise src.fail(item, "exclude_disks", f"{target!r} is listed twice")
        out.append(target)
    return tuple(out)


def _schedule(src: _Src, node: yaml.Node) -> Schedule:
    """The schedule mapping: exactly one of daily/weekly/hourly/every_minutes, plus an optional timezone."""
    kinds = ("daily", "weekly", "hourly", "every_minutes")
    f = src.mapping(node, "schedule", (*kinds, "timezone"))
    given = [k for k in kinds if k in f]
    if len(given) > 1:
        raise src.fail(f[given[1]], "schedule", f"needs exactly one of {', '.join(kinds)} (got {len(given)})")
    if not given:
        raise src.fail(node, "schedule", f"needs exactly one of {', '.join(kinds)}")
    tz = "UTC"
    if "timezone" in f:
        tz = src.scalar(f["timezone"], "schedule.timezone")
        if not _zone_ok(tz):
            raise src.fail(
                f["timezone"],
                "schedule.timezone",
                f"got {tz!r}; allowed: an IANA time zone such as UTC or Europe/Berlin",
            )
    kind, v = given[0], f[given[0]]
    if kind == "daily":
        h, m = src.clock(v, "schedule.daily")
        return Schedule("daily", h, m, timezone=tz)
    if kind == "weekly":
        w = src.mapping(v, "schedule.weekly", ("days", "at"))
        if "days" not in w or "at" not in w:
            raise src.fail(v, "schedule.weekly", "needs both 'days' (e.g. [mon, thu]) and 'at' (HH:MM)")
        h, m = src.clock(w["at"], "schedule.weekly.at")
        return Schedule("weekly", h, m, days=_days(src, w["days"]), timezone=tz)
    if kind == "hourly":
        if isinstance(v, yaml.MappingNode):
            hf = src.mapping(v, "schedule.hourly", ("every", "minute"))
            if "every" not in hf:
                raise src.fail(v, "schedule.hourly.every", "is required")
            every = src.integer(hf["every"], "schedule.hourly.every", 1, 24)
            minute = src.integer(hf["minute"], "schedule.hourly.minute", 0, 59) if "minute" in hf else 0
            return Schedule("hourly", minute=minute, every=every, timezone=tz)
        return Schedule("hourly", every=src.integer(v, "schedule.hourly", 1, 24), timezone=tz)
    return Schedule("every_minutes", every=src.integer(v, "schedule.every_minutes", 1, 1440), timezone=tz)


def _days(src: _Src, node: yaml.Node) -> tuple[int, ...]:
    """Weekday names (mon..sun) as sorted indexes."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out: set[int] = set()
    for item in items:
        day = src.scalar(item, "schedule.weekly.days").lower()[:3]
        if day not in WEEKDAYS:
            raise src.fail(
                item, "schedule.weekly.days", f"got {item.value!r}; allowed: {', '.join(WEEKDAYS)}"
            )
        out.add(WEEKDAYS.index(day))
    if not out:
        raise src.fail(node, "schedule.weekly.days", "needs at least one day")
    return tuple(sorted(out))


def _retention(src: _Src, node: yaml.Node) -> Retention:
    """The retention mapping."""
    f = src.mapping(node, "retention", RETENTION_FIELDS)
    counts = {k: src.integer(f[k], f"retention.{k}", 0, 100000) for k in RETENTION_FIELDS[:-1] if k in f}
    age = None
    if "max_age" in f:
        age = parse_age(src.scalar(f["max_age"], "retention.max_age"))
        if age is None:
            raise src.fail(
                f["max_age"],
                "retention.max_age",
                f"got {f['max_age'].value!r}; allowed: a duration like 90d, 12w, 36h",
            )
    return Retention(**counts, max_age=age)


def parse_age(text: str) -> timedelta | None:
    """'90d' -> 90 days (units s, m, h, d, w); None if malformed or zero."""
    m = AGE_RE.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        return None
    return timedelta(seconds=int(m.group(1)) * AGE_UNITS[m.group(2)])


def _zone_ok(name: str) -> bool:
    """True for a time zone zoneinfo knows."""
    if name not in available_timezones() and name != "UTC":
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def to_yaml(p: Policy) -> str:
    """The policy as YAML in the file format above (what `policy create NAME --flags` stores)."""
    s = p.schedule
    hm = f"{s.hour:02d}:{s.minute:02d}"
    sched: dict[str, object]
    if s.kind == "daily":
        sched = {"daily": hm}
    elif s.kind == "weekly":
        sched = {"weekly": {"days": [WEEKDAYS[d] for d in s.days], "at": hm}}
    elif s.kind == "hourly":
        sched = {"hourly": {"every": s.every, "minute": s.minute}}
    else:
        sched = {"every_minutes": s.every}
    sched["timezone"] = s.timezone
    doc: dict[str, object] = {"name": p.name, "schedule": sched}
    r = {k: v for k, v in p.retention.to_dict().items() if k != "max_age_s" and v}
    if p.retention.max_age is not None:
        r["max_age"] = format_duration(p.retention.max_age)
    if r:
        doc["retention"] = r
    if p.min_consistency:
        doc["consistency"] = p.min_consistency
    if p.boot_check_every:
        doc["boot_check_every"] = p.boot_check_every
    lim = {
        k: v
        for k, v in (("max_concurrent_jobs", p.max_concurrent_jobs), ("bandwidth_mbps", p.bandwidth_mbps))
        if v is not None
    }
    if lim:
        doc["limits"] = lim
    if p.exclude_disks:
        doc["exclude_disks"] = list(p.exclude_disks)
    if p.full_every:
        doc["full_every"] = int(p.full_every) if p.full_every.isdigit() else p.full_every
    if p.protect_newest:
        doc["protect_newest"] = p.protect_newest
    if p.compression != compress.DEFAULT:
        doc["compression"] = p.compression
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
