"""The handle a worker holds while its job runs: phases, bytes, details, warnings, cancellation checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from controller.jobs.exceptions import JobCancelled


class RunRecorder(Protocol):
    """What a JobRun writes through: the part of controller.jobs.store.JobStore it uses (no import of it here)."""

    def _phase_begin(self, job_id: str, name: str) -> int: ...

    def _phase_end(self, job_id: str, seq: int, state: str, duration_s: float, nbytes: int | None) -> None: ...

    def _add_bytes(self, job_id: str, n: int) -> None: ...

    def _set_details(self, job_id: str, details_json: str) -> None: ...

    def _cancel_requested(self, job_id: str) -> bool: ...


#: Told of every phase of the jobs this process runs: (run, phase, event, seconds); event is "start" (seconds None)
#: or the phase's end state "completed" | "failed" | "cancelled". The CLI shows phases live with it (cli/phases.py).
PhaseListener = Callable[["JobRun", str, str, "float | None"], None]
_phase_listeners: list[PhaseListener] = []


@contextmanager
def phase_events(listener: PhaseListener) -> Iterator[None]:
    """Call listener at each phase start and end while inside (a listener's error never touches the job)."""
    _phase_listeners.append(listener)
    try:
        yield
    finally:
        _phase_listeners.remove(listener)


def _tell(run: JobRun, name: str, event: str, seconds: float | None) -> None:
    """Pass one phase event to the listeners; a display problem must not fail a backup."""
    for listener in list(_phase_listeners):
        with suppress(Exception):
            listener(run, name, event, seconds)


class JobRun:
    """A running job; obtained from ``JobStore.run(job_id)`` (see controller.jobs.store for the usage)."""

    def __init__(self, store: RunRecorder, job_id: str, details: dict[str, Any], job_type: str = "", label: str = ""):
        self.store = store
        self.job_id = job_id
        #: the job's type and what it is about (its VM's name, else its host), for phase listeners
        self.job_type = job_type
        self.label = label
        self.details: dict[str, Any] = dict(details)
        self._phase_seq: int | None = None
        self._phase_bytes = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record a named phase with its start, end, duration, bytes and outcome."""
        parent = (self._phase_seq, self._phase_bytes)
        t0 = time.monotonic()
        seq = self.store._phase_begin(self.job_id, name)
        self._phase_seq, self._phase_bytes = seq, 0
        _tell(self, name, "start", None)
        state = "failed"
        try:
            yield
            state = "completed"
        except JobCancelled:
            state = "cancelled"
            raise
        finally:
            dur = round(time.monotonic() - t0, 3)
            self.store._phase_end(self.job_id, seq, state, dur, self._phase_bytes or None)
            self._phase_seq, self._phase_bytes = parent
            _tell(self, name, state, dur)

    def add_bytes(self, n: int) -> None:
        """Count n bytes moved, in the job total and in the current phase."""
        if self._phase_seq is not None:
            self._phase_bytes += n
        self.store._add_bytes(self.job_id, n)

    def detail(self, key: str, value: Any) -> None:
        """Set one key of the job's free-form details (must be JSON-serialisable)."""
        self.details[key] = value
        self._save_details()

    def warn(self, message: str) -> None:
        """Append a warning to details['warnings'] (shown by `vmbackup job show`)."""
        self.details.setdefault("warnings", []).append(message)
        self._save_details()

    def check_cancelled(self) -> None:
        """Raise JobCancelled if `vmbackup job cancel` asked this job to stop; call it at safe points."""
        if self.store._cancel_requested(self.job_id):
            raise JobCancelled(f"job {self.job_id} was cancelled on request", details={"job_id": self.job_id})

    def _save_details(self) -> None:
        """Write the details JSON (only the running worker writes it, so no merge is needed)."""
        self.store._set_details(self.job_id, json.dumps(self.details, default=str))

    def __repr__(self) -> str:
        return f"JobRun({self.job_id!r})"
