"""Incidents and their deliveries in the state DB (tables of schema migration 4).

An incident is one occurrence of a condition (:mod:`controller.notify.events`), keyed by (kind, subject). The
partial unique index ``incidents_one_open`` allows one open row per key, so however often the same failing state is
evaluated, and by however many processes, it opens one incident and queues one message per channel. When the
condition is gone the row is resolved, which re-arms the key: the next occurrence opens a new incident.

Deliveries (``notify_deliveries``) are queued in the transaction that opens (or resolves) the incident and are
claimed atomically before sending (``next_at`` moved forward), so two senders never send the same one; a failed
delivery is retried on later passes with doubling intervals and given up after :data:`MAX_PASSES`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from controller import db
from controller.notify.config import Channel
from controller.notify.events import Condition

#: a delivery failing on this many passes is given up (state 'failed'); it still shows in the digest
MAX_PASSES = 8
#: how long a claimed delivery is reserved for its sender (a sender that died frees it after this)
CLAIM = timedelta(minutes=10)
#: resolved incidents older than this are deleted
KEEP_RESOLVED = timedelta(days=30)


@dataclass
class Incident:
    """One row of the incidents table."""

    id: int
    kind: str
    subject: str
    vm_name: str
    state: str
    severity: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    opened_at: str = ""
    last_seen: str = ""
    resolved_at: str | None = None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Incident:
        """Build from an incidents row."""
        return cls(
            r["id"],
            r["kind"],
            r["subject"],
            r["vm_name"],
            r["state"],
            r["severity"],
            r["summary"],
            json.loads(r["details_json"] or "{}"),
            r["opened_at"],
            r["last_seen"],
            r["resolved_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON view (webhook payloads, --json)."""
        return dict(self.__dict__)


@dataclass
class Delivery:
    """A queued message of an incident for one channel."""

    incident: Incident
    channel: str
    what: str  # opened | resolved
    attempts: int


@dataclass
class Reconciled:
    """What one evaluation changed."""

    opened: list[Incident] = field(default_factory=list)
    resolved: list[Incident] = field(default_factory=list)
    still_open: int = 0


def _iso(t: datetime) -> str:
    """A stored timestamp (UTC ISO 8601, sorts lexicographically)."""
    return t.isoformat(timespec="microseconds")


def open_incidents(conn: sqlite3.Connection) -> list[Incident]:
    """Every open incident, oldest first."""
    rows = conn.execute("SELECT * FROM incidents WHERE state = 'open' ORDER BY opened_at, id").fetchall()
    return [Incident.from_row(r) for r in rows]


def recent_incidents(conn: sqlite3.Connection, since: datetime) -> list[Incident]:
    """Incidents open now, or opened or resolved since `since`, oldest first."""
    s = _iso(since)
    rows = conn.execute(
        "SELECT * FROM incidents WHERE state = 'open' OR opened_at >= ? OR resolved_at >= ? ORDER BY opened_at, id",
        (s, s),
    ).fetchall()
    return [Incident.from_row(r) for r in rows]


def reconcile(
    conn: sqlite3.Connection,
    conditions: list[Condition],
    channels: Iterable[Channel],
    enabled: Iterable[str],
    now: datetime,
) -> Reconciled:
    """Open incidents for new conditions and resolve those gone, queueing their deliveries, in one transaction.

    Open incidents of a kind no longer enabled are resolved without a message.
    """
    chans, kinds, ts = list(channels), set(enabled), _iso(now)
    out = Reconciled()
    with db.transaction(conn):
        current = {(r["kind"], r["subject"]): r for r in conn.execute("SELECT * FROM incidents WHERE state = 'open'")}
        seen: set[tuple[str, str]] = set()
        for c in conditions:
            if c.key in seen:
                continue
            seen.add(c.key)
            row = current.get(c.key)
            if row is not None:
                conn.execute("UPDATE incidents SET last_seen = ? WHERE id = ?", (ts, row["id"]))
                out.still_open += 1
                continue
            cur = conn.execute(
                "INSERT INTO incidents (kind, subject, vm_name, state, severity, summary, details_json, opened_at,"
                " last_seen) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?)",
                (c.kind, c.subject, c.vm_name, c.severity, c.summary, json.dumps(c.details, default=str), ts, ts),
            )
            inc = Incident(
                int(cur.lastrowid or 0),
                c.kind,
                c.subject,
                c.vm_name,
                "open",
                c.severity,
                c.summary,
                dict(c.details),
                ts,
                ts,
            )
            _queue(conn, inc, "opened", [ch for ch in chans if ch.immediate and c.kind in ch.events], ts)
            out.opened.append(inc)
        for key, row in current.items():
            if key in seen:
                continue
            conn.execute("UPDATE incidents SET state = 'resolved', resolved_at = ? WHERE id = ?", (ts, row["id"]))
            inc = Incident.from_row(row)
            inc.state, inc.resolved_at = "resolved", ts
            if inc.kind in kinds:
                targets = [ch for ch in chans if ch.immediate and ch.resolved and inc.kind in ch.events]
                _queue(conn, inc, "resolved", targets, ts)
            out.resolved.append(inc)
        conn.execute("DELETE FROM incidents WHERE state = 'resolved' AND resolved_at < ?", (_iso(now - KEEP_RESOLVED),))
    return out


def _queue(conn: sqlite3.Connection, inc: Incident, what: str, channels: list[Channel], ts: str) -> None:
    """Queue one delivery of inc per channel."""
    for ch in channels:
        conn.execute(
            "INSERT OR IGNORE INTO notify_deliveries (incident_id, channel, what, state, next_at)"
            " VALUES (?, ?, ?, 'pending', ?)",
            (inc.id, ch.name, what, ts),
        )


def claim_due(conn: sqlite3.Connection, now: datetime) -> list[Delivery]:
    """Pending deliveries due now, each reserved for this caller for CLAIM (no other sender takes them)."""
    ts = _iso(now)
    out = []
    with db.transaction(conn):
        rows = conn.execute(
            "SELECT d.channel, d.what, d.attempts, i.* FROM notify_deliveries d"
            " JOIN incidents i ON i.id = d.incident_id"
            " WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY i.opened_at, i.id",
            (ts,),
        ).fetchall()
        for r in rows:
            conn.execute(
                "UPDATE notify_deliveries SET next_at = ? WHERE incident_id = ? AND channel = ? AND what = ?",
                (_iso(now + CLAIM), r["id"], r["channel"], r["what"]),
            )
            out.append(Delivery(Incident.from_row(r), r["channel"], r["what"], int(r["attempts"])))
    return out


def mark_sent(conn: sqlite3.Connection, d: Delivery, now: datetime) -> None:
    """The delivery went out."""
    with db.transaction(conn):
        conn.execute(
            "UPDATE notify_deliveries SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL"
            " WHERE incident_id = ? AND channel = ? AND what = ?",
            (_iso(now), d.incident.id, d.channel, d.what),
        )


def mark_failed(
    conn: sqlite3.Connection, d: Delivery, error: str, now: datetime, retry_every: timedelta, final: bool = False
) -> bool:
    """The delivery failed on this pass: retry after retry_every x 2^attempts, or (final, or MAX_PASSES reached)
    give up; True if given up."""
    give_up = final or d.attempts + 1 >= MAX_PASSES
    next_at = now + retry_every * 2 ** min(d.attempts, 10)
    with db.transaction(conn):
        conn.execute(
            "UPDATE notify_deliveries SET state = ?, attempts = attempts + 1, last_error = ?, next_at = ?"
            " WHERE incident_id = ? AND channel = ? AND what = ?",
            ("failed" if give_up else "pending", error[:2000], _iso(next_at), d.incident.id, d.channel, d.what),
        )
    return give_up


def deliveries(conn: sqlite3.Connection, incident_id: int) -> list[dict[str, Any]]:
    """The deliveries of one incident (for --json and tests)."""
    rows = conn.execute(
        "SELECT channel, what, state, attempts, sent_at, last_error FROM notify_deliveries WHERE incident_id = ?"
        " ORDER BY channel, what",
        (incident_id,),
    ).fetchall()
    return [dict(r) for r in rows]


def claim_digest(conn: sqlite3.Connection, channel: str, at: tuple[int, int], now: datetime) -> str | None:
    """If channel's daily digest (at HH:MM UTC) is due, mark it sent now and return the previous time, else None.

    A channel seen for the first time starts its clock now (its first digest comes at the next HH:MM).
    """
    slot = now.replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    if slot > now:
        slot -= timedelta(days=1)
    with db.transaction(conn):
        row = conn.execute("SELECT sent_at FROM notify_digests WHERE channel = ?", (channel,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO notify_digests (channel, sent_at) VALUES (?, ?)", (channel, _iso(now)))
            return None
        if row["sent_at"] >= _iso(slot):
            return None
        conn.execute("UPDATE notify_digests SET sent_at = ? WHERE channel = ?", (_iso(now), channel))
        return str(row["sent_at"])


def unclaim_digest(conn: sqlite3.Connection, channel: str, previous: str) -> None:
    """Put a digest claim back (its sending failed), so a later pass tries again."""
    with db.transaction(conn):
        conn.execute("UPDATE notify_digests SET sent_at = ? WHERE channel = ?", (previous, channel))
