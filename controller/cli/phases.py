"""Job phases shown as they happen: `register`, `backup`, `restore` and `boot-check` print one line on stderr when a
phase starts and one when it ends (stdout keeps the result; ``--json`` prints no phase lines)::

    web1 backup: freeze ...
    web1 backup: freeze completed in 0.04 s

The lines come from the job's own phases (controller.jobs.run.phase_events), the same ones `vmbackup job show ID`
lists afterwards, so what the terminal shows and what the job history records cannot differ.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from controller.jobs.run import JobRun, phase_events

_lock = threading.Lock()  # register runs VMs in threads: one whole line at a time


def line(run: JobRun, phase: str, event: str, seconds: float | None) -> str:
    """The text of one phase event."""
    who = f"{run.label} {run.job_type}".strip() or run.job_id
    if event == "start":
        return f"{who}: {phase} ..."
    return f"{who}: {phase} {event} in {seconds or 0.0:.2f} s"


def _show(run: JobRun, phase: str, event: str, seconds: float | None) -> None:
    """Print one phase event on stderr (through rich's live display when a progress bar is up: it redirects)."""
    with _lock:
        print(line(run, phase, event, seconds), file=sys.stderr, flush=True)


@contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """While inside, every job phase this process runs is printed on stderr (enabled=False: nothing, for --json)."""
    with phase_events(_show) if enabled else nullcontext():
        yield
