"""The quiescer seam: which freeze/thaw mechanism a backup uses, chosen by the VM's registration.

    q = quiescer_for(settings, reg, dom, job_id, timeout_s)
    q.freeze()              # or q.skip(reason)
    ... snapshot ...
    result = q.thaw()       # a Quiesce: consistency, reason, window; never raises for guest trouble

``reg.quiescer``: "agent" (the vmbackup agent over gRPC mTLS, controller/backup/quiesce.py), "qga" (the QEMU guest
agent through libvirt, controller/backup/qga.py) or "none" (registered without either: crash-consistent). The engine
does not care which: full and incremental backups run the same way around the round.
"""

from __future__ import annotations

from typing import Protocol

import libvirt

from controller.backup.qga import QgaQuiescer
from controller.backup.quiesce import AgentQuiescer, Quiesce
from controller.registration.store import Registration
from controller.settings import Settings

#: what a registration may record (the CLI's --quiescer auto resolves to one of them)
QUIESCERS = ("agent", "qga", "none")


class Quiescer(Protocol):
    """One freeze/thaw round around a snapshot."""

    #: set while the guest may be frozen: the engine records it in the backup intent for recovery
    token: str | None

    def freeze(self) -> None:
        """Freeze the guest (or remember why not)."""
        ...

    def skip(self, reason: str) -> None:
        """Do not freeze; the round ends CRASH with this reason."""
        ...

    def thaw(self) -> Quiesce:
        """Thaw if frozen; the consistency reached."""
        ...


class NoQuiescer:
    """A VM registered without any quiescer: every round is CRASH, saying why."""

    def __init__(self) -> None:
        self.token: str | None = None
        self._reason = (
            "registered without a quiescer (no vmbackup agent, no answering qemu-guest-agent): "
            "crash-consistent snapshot"
        )

    def freeze(self) -> None:
        """Nothing to freeze."""

    def skip(self, reason: str) -> None:
        """Record a more specific reason."""
        self._reason = reason

    def thaw(self) -> Quiesce:
        """CRASH with the reason."""
        return Quiesce("CRASH", self._reason, None, None, [f"crash-consistent: {self._reason}"], quiescer="none")


def quiescer_for(
    settings: Settings, reg: Registration, dom: libvirt.virDomain, job_id: str, timeout_s: float
) -> Quiescer:
    """The quiescer the VM was registered with."""
    if reg.quiescer == "qga":
        return QgaQuiescer(dom, timeout_s=timeout_s)
    if reg.quiescer == "none":
        return NoQuiescer()
    return AgentQuiescer(settings, reg, job_id=job_id, timeout_s=timeout_s)
