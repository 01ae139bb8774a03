"""One notification pass (evaluate, reconcile, deliver, digests) and the background thread `vmbackup serve` runs.

Usage::

    n = Notifier(settings)              # reads $VMBACKUP_HOME/config.yaml's notify section
    report = n.run_once()               # PassReport: opened, resolved, sent, failed, digests
    n.start(); ...; n.stop()            # every `notify.every` (60 s) in a daemon thread, own DB connection

Why an evaluator and not hooks in the engines: every incident is derived from what the state DB and the vault say
(docs/design.md, "Notifications"), so a backup run from the CLI, a controller that crashed mid-job, or a serve that
was down all end in the same incidents; sending (which can take a while with retries) never slows a backup or the
scheduler's tick, and nothing is lost across restarts (incidents and deliveries are rows).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller import db
from controller.errors import VmBackupError
from controller.notify import config as config_mod
from controller.notify import events, incidents, messages
from controller.notify.channels import Message, send
from controller.notify.config import Channel, NotifyConfig
from controller.notify.exceptions import NotifyChannelUnknown, NotifyNotConfigured
from controller.settings import Settings
from controller.vault import Vault

log = logging.getLogger("vmbackup.serve.notify")  # serve's handler prints it; the CLI prints its own report


@dataclass
class PassReport:
    """What one pass did."""

    conditions: int = 0
    opened: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # "channel: incident id what"
    failed: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return dict(self.__dict__)


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


class Notifier:
    """Derives incidents from the state DB and vault and sends their messages (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        cfg: NotifyConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.cfg = cfg if cfg is not None else config_mod.load(settings)
        self.clock = clock
        self.sleep = sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, conn: sqlite3.Connection | None = None) -> PassReport:
        """One pass on conn (or a connection of its own, closed after)."""
        own = conn is None
        c = conn if conn is not None else db.connect(self.settings.db_path)
        try:
            return self._pass(c, self.clock())
        finally:
            if own:
                c.close()

    def _pass(self, conn: sqlite3.Connection, now: datetime) -> PassReport:
        """Evaluate, reconcile, deliver what is due, send due digests."""
        rep = PassReport()
        points = Vault(self.settings.vault).list_points()
        open_keys = [(i.kind, i.subject) for i in incidents.open_incidents(conn)]
        conds = events.evaluate(conn, self.settings.vault, points, self.cfg, now, open_keys)
        rep.conditions = len(conds)
        r = incidents.reconcile(conn, conds, self.cfg.channels, self.cfg.events, now)
        rep.opened = [i.to_dict() for i in r.opened]
        rep.resolved = [i.to_dict() for i in r.resolved]
        for i in r.opened:
            log.info("incident %d opened: %s", i.id, i.summary)
        for i in r.resolved:
            log.info("incident %d resolved: %s", i.id, i.summary)
        self._deliver(conn, now, rep)
        self._digests(conn, now, rep)
        return rep

    def _deliver(self, conn: sqlite3.Connection, now: datetime, rep: PassReport) -> None:
        """Send every due delivery; failures are retried on later passes."""
        for d in incidents.claim_due(conn, now):
            ch = self.cfg.channel(d.channel)
            label = f"{d.channel}: incident {d.incident.id} {d.what}"
            if ch is None:
                incidents.mark_failed(conn, d, "channel no longer configured", now, timedelta(0), final=True)
                rep.failed.append(f"{label}: channel no longer configured")
                continue
            try:
                send(ch, messages.incident(d.incident, d.what, now), self.sleep)
            except VmBackupError as e:
                gave_up = incidents.mark_failed(conn, d, e.message, self.clock(), self.cfg.every)
                log.error("%s not delivered%s: %s", label, " (given up)" if gave_up else "", e.message)
                rep.failed.append(f"{label}: {e.message}")
                continue
            incidents.mark_sent(conn, d, self.clock())
            rep.sent.append(label)

    def _digests(self, conn: sqlite3.Connection, now: datetime, rep: PassReport) -> None:
        """Send the daily digest to each digest channel whose time has come."""
        for ch in self.cfg.channels:
            if not ch.digest:
                continue
            previous = incidents.claim_digest(conn, ch.name, self.cfg.digest_at, now)
            if previous is None:
                continue
            since = datetime.fromisoformat(previous)
            found = [i for i in incidents.recent_incidents(conn, since) if i.kind in ch.events]
            try:
                send(ch, messages.digest(found, previous, now), self.sleep)
            except VmBackupError as e:
                incidents.unclaim_digest(conn, ch.name, previous)
                log.error("digest to %s not delivered: %s", ch.name, e.message)
                rep.failed.append(f"{ch.name}: digest: {e.message}")
                continue
            rep.digests.append(ch.name)

    def send_test(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Send the test message to one channel (or all); one result per channel, errors included."""
        if not self.cfg.channels:
            raise NotifyNotConfigured(f"no notification channel in {self.cfg.source or self.settings.config_path}")
        chans: list[Channel] = list(self.cfg.channels)
        if channel is not None:
            one = self.cfg.channel(channel)
            if one is None:
                names = ", ".join(c.name for c in chans)
                raise NotifyChannelUnknown(f"no channel {channel!r} in {self.cfg.source} (channels: {names})")
            chans = [one]
        out = []
        for ch in chans:
            msg: Message = messages.test(ch.name, self.clock())
            t0 = time.monotonic()
            try:
                attempts = send(ch, msg, self.sleep)
                out.append(
                    {"channel": ch.name, "ok": True, "attempts": attempts, "seconds": round(time.monotonic() - t0, 3)}
                )
            except VmBackupError as e:
                out.append(
                    {"channel": ch.name, "ok": False, "error": e.to_dict(), "seconds": round(time.monotonic() - t0, 3)}
                )
        return out

    # --- background --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run a pass every cfg.every in a daemon thread (nothing to do without channels)."""
        if not self.cfg.channels:
            log.info("notify: no channel configured in %s", self.settings.config_path)
            return
        self._thread = threading.Thread(target=self._loop, name="vmbackup-notify", daemon=True)
        self._thread.start()
        log.info("notify: %d channel(s), a pass every %s", len(self.cfg.channels), self.cfg.every)

    def _loop(self) -> None:
        """Passes until stopped; one connection for the thread; a failing pass is logged, not fatal."""
        conn = db.connect(self.settings.db_path)
        try:
            while not self._stop.is_set():
                try:
                    self.run_once(conn)
                except (VmBackupError, sqlite3.Error, OSError) as e:
                    log.error("notify pass failed: %s", e)
                self._stop.wait(self.cfg.every.total_seconds())
        finally:
            conn.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (after the pass it is in, at most timeout_s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
