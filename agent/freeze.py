"""The freeze session: one freeze at a time, a token, a watchdog that always thaws, and thaw-on-exit.

Every state change happens under ``_op`` (one freeze/thaw operation at a time); readers (GetInfo,
FreezeStatus) take only the short ``_state`` lock, so they answer while a freeze is held or in progress.
The watchdog here is a thread: it dies with the process. The quiescer gets the timeout too, so the thaw guard
(agent/thawguard.py, a separate process) thaws if this process is killed or stuck.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.exceptions import AlreadyFrozen, InvalidRequest, InvalidToken, NotFrozen, ShuttingDown
from agent.quiesce.base import Consistency, FreezeOutcome, Quiescer, ThawOutcome

log = logging.getLogger("vmbackup.agent.freeze")


@dataclass
class Session:
    """One freeze, from Freeze to its end (Thaw, watchdog or shutdown)."""

    token: str
    job_id: str
    timeout_s: float
    outcome: FreezeOutcome
    frozen_at: float
    done: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0
    end: str = ""  # "", "thawed", "auto-thawed", "signal"
    thaw: ThawOutcome | None = None
    reported: bool = False  # a Thaw call already received the auto-thaw result


@dataclass(frozen=True)
class ThawReport:
    """What Thaw answers."""

    thawed: list[str]
    frozen_ms: int  # from the Freeze outcome to the thaw's end (what ThawResponse.frozen_ms always carried)
    held: bool
    auto_thawed: bool
    consistency: Consistency
    outcome: ThawOutcome
    #: First FIFREEZE to last FITHAW, measured around the ioctls (0.0: the quiescer does not measure it).
    guest_frozen_ms: float = 0.0
    freeze_hooks_ms: int = 0  # the freeze hooks, run before the first FIFREEZE
    thaw_hooks_ms: int = 0  # the thaw hooks, run after the last FITHAW


@dataclass(frozen=True)
class Status:
    """What FreezeStatus answers."""

    frozen: bool
    job_id: str
    mount_points: list[str]
    frozen_for_ms: int
    timeout_ms: int
    last_end: str
    last_job_id: str


class FreezeManager:
    """Owns the quiescer and the single freeze session."""

    def __init__(self, quiescer: Quiescer, default_timeout_s: float, max_timeout_s: float) -> None:
        self.quiescer = quiescer
        limit = quiescer.max_hold_s
        self.max_timeout_s = min(max_timeout_s, limit) if limit else max_timeout_s
        self.default_timeout_s = min(default_timeout_s, self.max_timeout_s)
        self._op = threading.Lock()
        self._state = threading.Lock()
        self._session: Session | None = None
        self._last: Session | None = None
        self._closing = False

    def freeze(
        self, mount_points: Sequence[str] | None, timeout_s: float, job_id: str,
        defer: Callable[[Callable[[], None]], bool] | None = None,
    ) -> tuple[str, Session]:
        """Freeze and arm the watchdog; refuse when a freeze is held or the agent is stopping.

        ``defer`` (the RPC's ``add_callback``) may take the watchdog's start and the log line to after the reply
        has left: it is called with that work and returns False when it cannot run it (then it runs at once).
        """
        timeout = timeout_s or self.default_timeout_s
        if not 0 < timeout <= self.max_timeout_s:
            raise InvalidRequest(f"timeout {timeout:g} s is outside (0, {self.max_timeout_s:g}] s")
        with self._op:
            if self._closing:
                raise ShuttingDown("the agent is stopping")
            if self._session is not None:
                raise AlreadyFrozen(f"already frozen for job {self._session.job_id!r}")
            token = secrets.token_urlsafe(24)  # before the freeze: only the ioctls and the reply inside it
            outcome = self.quiescer.freeze(mount_points, timeout)
            session = Session(token, job_id, timeout, outcome, time.monotonic())
            with self._state:
                self._session = session

        def settle() -> None:
            self._settle(session)

        if defer is None or not defer(settle):
            settle()
        return session.token, session

    def _settle(self, session: Session) -> None:
        """Start ``session``'s watchdog and log the freeze (a watchdog of an already ended session returns at once).

        The thread's creation and the log line (a wakeup of journald) cost a single-vCPU guest a few milliseconds:
        the service runs this after the Freeze reply has left; the thaw guard covers the moment in between.
        """
        watchdog = threading.Thread(target=self._watchdog, args=(session,), name="watchdog", daemon=True)
        watchdog.start()
        o = session.outcome
        log.info("job %s: froze %s (%s), watchdog %.1f s", session.job_id, o.frozen, o.consistency.value,
                 session.timeout_s)

    def thaw(self, token: str) -> ThawReport:
        """Thaw the session named by ``token``; report an earlier auto-thaw honestly (held=False)."""
        with self._op:
            session = self._session
            if session is not None:
                if not hmac.compare_digest(session.token, token):
                    raise InvalidToken("the token does not match the current freeze")
                self._end(session, "thawed")
                session.reported = True
                return self._report(session)
            last = self._last
            if last is not None and not last.reported and hmac.compare_digest(last.token, token):
                last.reported = True
                return self._report(last)
            if last is not None and not hmac.compare_digest(last.token, token):
                raise InvalidToken("the token does not match the last freeze")
            raise NotFrozen("nothing is frozen")

    def status(self) -> Status:
        """The current freeze, if any, and how the last one ended."""
        with self._state:
            s, last = self._session, self._last
        now = time.monotonic()
        return Status(
            frozen=s is not None,
            job_id=s.job_id if s else "",
            mount_points=list(s.outcome.frozen) if s else [],
            frozen_for_ms=int((now - s.frozen_at) * 1000) if s else 0,
            timeout_ms=int(s.timeout_s * 1000) if s else 0,
            last_end=last.end if last else "",
            last_job_id=last.job_id if last else "",
        )

    def frozen_mount_points(self) -> set[str]:
        """Mount points frozen right now."""
        with self._state:
            return set(self._session.outcome.frozen) if self._session else set()

    def shutdown(self, reason: str = "signal") -> None:
        """Refuse new freezes and thaw whatever is held (called on SIGTERM/SIGINT and at exit)."""
        self._closing = True
        with self._op:
            if self._session is not None:
                log.warning("thawing job %s before exit (%s)", self._session.job_id, reason)
                self._end(self._session, reason)

    def _watchdog(self, session: Session) -> None:
        """Thaw ``session`` when Thaw has not come within its timeout (counted from the freeze)."""
        if session.done.wait(max(0.0, session.frozen_at + session.timeout_s - time.monotonic())):
            return
        with self._op:
            if self._session is session:
                log.warning("job %s: no Thaw within %.1f s, auto-thawing", session.job_id, session.timeout_s)
                self._end(session, "auto-thawed")

    def _end(self, session: Session, how: str) -> None:
        """Thaw through the quiescer and retire the session (caller holds ``_op``)."""
        session.thaw = self.quiescer.thaw()
        session.ended_at = time.monotonic()
        session.end = how
        session.done.set()
        with self._state:
            self._session, self._last = None, session
        if session.thaw.errors:
            log.error("job %s: thaw errors: %s", session.job_id, session.thaw.errors)

    @staticmethod
    def _report(session: Session) -> ThawReport:
        """The Thaw answer for an ended session."""
        assert session.thaw is not None
        held = session.end == "thawed" and session.thaw.held
        start, stop = session.outcome.frozen_at, session.thaw.thawed_at
        return ThawReport(
            thawed=session.thaw.thawed,
            frozen_ms=int((session.ended_at - session.frozen_at) * 1000),
            held=held,
            auto_thawed=session.end == "auto-thawed",
            consistency=session.outcome.consistency if held else Consistency.CRASH,
            outcome=session.thaw,
            guest_frozen_ms=(stop - start) * 1000 if start is not None and stop is not None else 0.0,
            freeze_hooks_ms=sum(h.duration_ms for h in session.outcome.hooks),
            thaw_hooks_ms=sum(h.duration_ms for h in session.thaw.hooks),
        )
