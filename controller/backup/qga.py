"""The QEMU guest agent (qemu-ga) as a quiescer, through libvirt's public API only.

No SSH, nothing installed by vmbackup: the guest runs qemu-guest-agent and its domain has the virtio-serial channel
``org.qemu.guest_agent.0``. One round::

    q = QgaQuiescer(dom, timeout_s=10)
    q.freeze()            # bounded agent timeout, guestInfo (OS), fsFreeze() of every file system
    ... snapshot ...
    result = q.thaw()     # fsThaw(); the consistency reached and the window, never raises

The rules:

* every agent call runs under ``agentSetResponseTimeout`` (a hung agent cannot hang the backup); the domain's
  default is restored after the round;
* the agent does not answer guestInfo -> no freeze at all, CRASH with the reason;
* fsFreeze fails or times out -> fsThaw is attempted right away (a late freeze must not stay), CRASH;
* fsThaw fails or times out -> CRASH (the hold is not confirmed);
* Linux guest -> FILE_SYSTEM: qemu-ga's fsfreeze hooks (if configured) cannot be verified from outside;
* Windows guest (guestInfo ``os.id`` ``mswindows``) -> APPLICATION only when qemu-ga's VSS freeze succeeded and
  its thaw confirmed that the hold lasted (qemu-ga's VSS provider fails the thaw past VSS's ~10 s hold limit);
  otherwise CRASH with the reason. Not exercised here: no Windows guest can be built on this machine.
"""

from __future__ import annotations

import contextlib
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from controller.backup.quiesce import Quiesce

NAME = "qga"
#: the virtio-serial channel qemu-ga listens on (libvirt connects to it by this name)
QGA_CHANNEL = "org.qemu.guest_agent.0"
#: the freeze token recorded in the backup intent: a recovery thaws such a guest with dom.fsThaw()
QGA_TOKEN = "qga"
#: how long a liveness probe (guestInfo) may take at registration
PING_TIMEOUT_S = 5.0
WINDOWS_OS_ID = "mswindows"  # qemu-ga's os.id on Windows
_LINUX_REASON = "qemu-guest-agent's fsfreeze hooks, if any, cannot be verified from outside, so not APPLICATION"


@dataclass(frozen=True)
class GuestOs:
    """What qemu-ga says about the guest (guestInfo OS + hostname)."""

    id: str
    name: str
    kernel: str
    hostname: str

    @property
    def windows(self) -> bool:
        """True for a Windows guest (qemu-ga with its VSS provider)."""
        return self.id == WINDOWS_OS_ID


def channel_state(dom: libvirt.virDomain) -> str | None:
    """The qemu-ga channel as the domain XML shows it: None (no channel), "connected", "disconnected" (the guest
    side is closed: qemu-ga not running), or "defined" (present, no state reported: e.g. the VM is not running)."""
    root = ET.fromstring(dom.XMLDesc(0))
    for target in root.findall("./devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == QGA_CHANNEL:
            return target.get("state") or "defined"
    return None


def bound(dom: libvirt.virDomain, timeout_s: float) -> None:
    """Make libvirt give up on any agent reply after ``timeout_s`` (whole seconds, at least 1)."""
    dom.agentSetResponseTimeout(max(1, math.ceil(timeout_s)))


def unbound(dom: libvirt.virDomain) -> None:
    """Restore libvirt's default agent timeout for the domain (best effort)."""
    with contextlib.suppress(libvirt.libvirtError):
        dom.agentSetResponseTimeout(libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT)


def guest_os(dom: libvirt.virDomain) -> GuestOs:
    """guestInfo (OS, hostname) from qemu-ga; raises libvirt.libvirtError when it does not answer."""
    types = libvirt.VIR_DOMAIN_GUEST_INFO_OS | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME
    info: dict[str, object] = dom.guestInfo(types)  # the binding returns a dict (typed str)
    return GuestOs(
        id=str(info.get("os.id", "")),
        name=str(info.get("os.pretty-name") or info.get("os.name") or ""),
        kernel=str(info.get("os.kernel-release", "")),
        hostname=str(info.get("hostname", "")),
    )


def ping(dom: libvirt.virDomain, timeout_s: float = PING_TIMEOUT_S) -> GuestOs:
    """Ask qemu-ga for guestInfo under a short timeout; raises libvirt.libvirtError if it does not answer."""
    bound(dom, timeout_s)
    try:
        return guest_os(dom)
    finally:
        unbound(dom)


def thaw_now(dom: libvirt.virDomain, timeout_s: float) -> str | None:
    """fsThaw() under a bounded timeout (recovery, failed freezes); None when it answered, else libvirt's message."""
    try:
        bound(dom, timeout_s)
        dom.fsThaw()
        return None
    except libvirt.libvirtError as e:
        return str(e.get_error_message())
    finally:
        unbound(dom)


def _crash(reason: str, window_ms: float | None = None) -> Quiesce:
    """A CRASH outcome of a qga round, with the reason also as a warning."""
    return Quiesce("CRASH", reason, window_ms, None, [f"crash-consistent: {reason}"], quiescer=NAME)


class QgaQuiescer:
    """One freeze/thaw round through qemu-ga; never raises for agent trouble (falls back to CRASH)."""

    name = NAME

    def __init__(self, dom: libvirt.virDomain, *, timeout_s: float) -> None:
        self.dom = dom
        self.timeout_s = timeout_s
        #: set while the guest may be frozen and no thaw is confirmed (the engine records it in the intent)
        self.token: str | None = None
        self.os: GuestOs | None = None
        self._frozen = 0  # file systems fsFreeze reported frozen
        self._failure: str | None = None
        self._t_frozen = 0.0
        self._freeze_rpc_ms: float | None = None

    def freeze(self) -> None:
        """Probe qemu-ga, then freeze every file system; on any error remember why (and thaw what may be frozen)."""
        try:
            bound(self.dom, self.timeout_s)
            self.os = guest_os(self.dom)
        except libvirt.libvirtError as e:
            self._failure = f"qemu-guest-agent did not answer: {e.get_error_message()}"
            return
        self.token = QGA_TOKEN  # from here on the guest may be frozen until a thaw answers
        t_call = time.monotonic()
        try:
            self._frozen = self.dom.fsFreeze()
        except libvirt.libvirtError as e:
            took = time.monotonic() - t_call
            self._failure = f"qemu-guest-agent freeze failed after {took:.1f} s: {e.get_error_message()}"
            self._thaw_attempt()
            return
        self._t_frozen = time.monotonic()
        self._freeze_rpc_ms = (self._t_frozen - t_call) * 1000
        if self._frozen == 0:
            self._failure = "qemu-guest-agent froze no file system"
            self._thaw_attempt()

    def skip(self, reason: str) -> None:
        """Do not ask qemu-ga at all (e.g. a paused guest cannot answer): the round ends CRASH with this reason."""
        self._failure = reason

    def _thaw_attempt(self) -> None:
        """Thaw after a failed freeze; the token stays (recovery retries) unless the thaw answered."""
        err = thaw_now(self.dom, self.timeout_s)
        if err is None:
            self.token = None
            self._failure = f"{self._failure}; thawed"
        else:
            self._failure = f"{self._failure}; the thaw attempt failed too: {err}"

    def thaw(self) -> Quiesce:
        """Thaw (if frozen) and return the consistency reached; restores the domain's agent timeout."""
        try:
            q = self._round_end()
        finally:
            unbound(self.dom)
        q.freeze_rpc_ms = self._freeze_rpc_ms
        return q

    def _round_end(self) -> Quiesce:
        """The thaw and the verdict (see the module docstring)."""
        if self._failure is not None or not self._frozen:
            if self.token is not None:  # a failed freeze whose thaw did not answer: one more try
                self._thaw_attempt()
            return _crash(self._failure or "qemu-guest-agent did not freeze")
        try:
            thawed = self.dom.fsThaw()
            window = (time.monotonic() - self._t_frozen) * 1000
        except libvirt.libvirtError as e:
            window = (time.monotonic() - self._t_frozen) * 1000
            reason = (f"thaw not confirmed by qemu-guest-agent within {self.timeout_s:g} s "
                      f"({e.get_error_message()}); snapshot result inconsistent")
            return _crash(reason, window)
        self.token = None
        if thawed == 0:
            reason = "qemu-guest-agent thawed nothing: the freeze did not hold for the whole window"
            return _crash(reason, window)
        return self._verdict(window)

    def _verdict(self, window_ms: float) -> Quiesce:
        """The consistency of a confirmed freeze and thaw, by guest OS."""
        assert self.os is not None
        n = self._frozen
        if self.os.windows:
            reason = (f"qemu-guest-agent's VSS freeze succeeded on {n} volume(s) and its thaw confirmed the hold "
                      "(VSS writers frozen)")
            return Quiesce("APPLICATION", reason, window_ms, None, quiescer=NAME)
        reason = f"{n} file system(s) frozen by qemu-guest-agent; {_LINUX_REASON}"
        return Quiesce("FILE_SYSTEM", reason, window_ms, None, quiescer=NAME)
