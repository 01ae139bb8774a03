"""The quiescer interface (Linux fsfreeze + hooks, Windows VSS) and the plain results it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.contract import Consistency as Consistency  # re-exported: the quiescers and service import it from here


@dataclass(frozen=True)
class FsEntry:
    """One mounted filesystem as the agent sees it."""

    mount_point: str
    device: str
    fs_type: str
    eligible: bool
    reason: str = ""


@dataclass(frozen=True)
class HookRun:
    """The result of running one hook with one action."""

    name: str
    action: str
    exit_code: int
    duration_ms: int
    timed_out: bool = False
    output: str = ""

    @property
    def ok(self) -> bool:
        """True when the hook exited 0 in time."""
        return self.exit_code == 0 and not self.timed_out


@dataclass
class FreezeOutcome:
    """What a freeze achieved."""

    frozen: list[str]
    skipped: list[tuple[str, str]]
    consistency: Consistency
    hooks: list[HookRun] = field(default_factory=list)
    freeze_ms: int = 0
    #: Monotonic time right before the first FIFREEZE (None: the quiescer does not measure it, or froze nothing).
    frozen_at: float | None = None


@dataclass
class ThawOutcome:
    """What a thaw achieved."""

    thawed: list[str]
    errors: list[str] = field(default_factory=list)
    hooks: list[HookRun] = field(default_factory=list)
    #: False when the platform released the freeze on its own before thaw (e.g. VSS's 10 s hold limit).
    held: bool = True
    #: Monotonic time right after the last FITHAW (None: the quiescer does not measure it, or thawed nothing).
    thawed_at: float | None = None


class Quiescer(Protocol):
    """Makes a guest consistent for a snapshot and releases it again."""

    name: str
    capabilities: tuple[str, ...]
    #: The longest the platform can hold a freeze, in seconds (None: only the agent's own limit).
    max_hold_s: float | None

    def filesystems(self) -> list[FsEntry]:
        """Every mounted filesystem with its eligibility."""
        ...

    def hooks(self) -> list[str]:
        """Names of the application hooks that will run."""
        ...

    def freeze(self, mount_points: Sequence[str] | None, hold_s: float = 0.0) -> FreezeOutcome:
        """Freeze the given mount points (None: all eligible) to be held up to ``hold_s`` (the watchdog timeout).

        On failure leave nothing frozen and raise.
        """
        ...

    def thaw(self) -> ThawOutcome:
        """Release what the last freeze holds; never raises for a single filesystem."""
        ...
