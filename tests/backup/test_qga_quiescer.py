"""QgaQuiescer's verdicts and thaw guard against a scripted libvirt domain (host-only; the real guest is in
tests/backup/test_qga_guest.py)."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from controller.backup.qga import QGA_TOKEN, QgaQuiescer, channel_state
from controller.backup.quiesce import AgentQuiescer
from controller.backup.quiescers import NoQuiescer, quiescer_for
from tests.helpers import made_up_registration

LINUX = {"os.id": "debian", "os.pretty-name": "Debian GNU/Linux 12 (bookworm)", "os.kernel-release": "6.1"}
WINDOWS = {"os.id": "mswindows", "os.name": "Microsoft Windows Server 2022"}


def _err(msg: str) -> libvirt.libvirtError:
    """A libvirtError with a message."""
    e = libvirt.libvirtError(msg)
    e.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 0, msg, 0, "", "", "", 0, 0)
    return e


class FakeDom:
    """The libvirt calls QgaQuiescer makes, scripted; records the call order."""

    def __init__(self, info: dict[str, Any] | None = LINUX, freeze: int | str = 3, thaw: list[int | str] | None = None,
                 xml: str = "") -> None:
        self.info, self.freeze_result = info, freeze
        self.thaw_results = list(thaw if thaw is not None else [3])
        self.calls: list[str] = []
        self.timeout = -1
        self.xml = xml

    def agentSetResponseTimeout(self, t: int, flags: int = 0) -> int:
        """Record the timeout."""
        self.timeout = t
        self.calls.append(f"timeout {t}")
        return 0

    def guestInfo(self, types: int = 0, flags: int = 0) -> dict[str, Any]:
        """The scripted OS info, or an agent error."""
        self.calls.append("info")
        if self.info is None:
            raise _err("Guest agent is not responding: QEMU guest agent is not connected")
        return self.info

    def fsFreeze(self, mountpoints: list[str] | None = None, flags: int = 0) -> int:
        """The scripted freeze."""
        self.calls.append("freeze")
        if isinstance(self.freeze_result, str):
            raise _err(self.freeze_result)
        return self.freeze_result

    def fsThaw(self, mountpoints: list[str] | None = None, flags: int = 0) -> int:
        """The scripted thaws, in order (the last repeats)."""
        self.calls.append("thaw")
        r = self.thaw_results.pop(0) if len(self.thaw_results) > 1 else self.thaw_results[0]
        if isinstance(r, str):
            raise _err(r)
        return r

    def XMLDesc(self, flags: int = 0) -> str:
        """The scripted domain XML."""
        return self.xml


def _round(dom: FakeDom, timeout_s: float = 2.5) -> tuple[QgaQuiescer, Any]:
    """freeze + thaw."""
    q = QgaQuiescer(dom, timeout_s=timeout_s)
    q.freeze()
    return q, q.thaw()


def test_linux_guest_is_file_system_with_a_window_and_the_timeout_restored() -> None:
    dom = FakeDom()
    q, r = _round(dom)
    assert r.consistency == "FILE_SYSTEM" and r.quiescer == "qga"
    assert "3 file system(s) frozen" in r.reason and "cannot be verified from outside" in r.reason
    assert r.window_ms is not None and r.window_ms >= 0 and r.freeze_rpc_ms is not None
    assert dom.calls == ["timeout 3", "info", "freeze", "thaw", "timeout -1"]  # bounded (2.5 s -> 3), then default
    assert q.token is None and r.agent_version is None and not r.warnings


def test_windows_guest_is_application_only_when_vss_freeze_and_thaw_succeed() -> None:
    _, ok = _round(FakeDom(info=WINDOWS, freeze=2, thaw=[2]))
    assert ok.consistency == "APPLICATION" and "VSS" in ok.reason
    _, late = _round(FakeDom(info=WINDOWS, freeze=2,
                             thaw=["couldn't hold writes: fsfreeze is limited up to 10 seconds"]))
    assert late.consistency == "CRASH" and "limited up to 10 seconds" in late.reason
    _, refused = _round(FakeDom(info=WINDOWS, freeze="failed to add volume to the snapshot set", thaw=[0]))
    assert refused.consistency == "CRASH" and "snapshot set" in refused.reason


def test_agent_not_answering_is_crash_without_a_freeze() -> None:
    dom = FakeDom(info=None)
    q, r = _round(dom)
    assert r.consistency == "CRASH" and "did not answer" in r.reason and "not connected" in r.reason
    assert "freeze" not in dom.calls and "thaw" not in dom.calls and q.token is None
    assert r.warnings == [f"crash-consistent: {r.reason}"] and dom.timeout == -1


def test_freeze_timeout_thaws_at_once_and_is_crash() -> None:
    dom = FakeDom(freeze="Guest agent is not responding: Guest agent not available for now", thaw=[0])
    q, r = _round(dom)
    assert r.consistency == "CRASH" and "freeze failed" in r.reason and "thawed" in r.reason
    assert dom.calls.count("thaw") == 1 and q.token is None


def test_freeze_timeout_and_thaw_timeout_keep_the_token_and_retry_at_thaw() -> None:
    dom = FakeDom(freeze="agent timeout", thaw=["agent timeout"])
    q = QgaQuiescer(dom, timeout_s=1)
    q.freeze()
    assert q.token == QGA_TOKEN  # the engine records it: recovery thaws with fsThaw
    r = q.thaw()
    assert r.consistency == "CRASH" and "thaw attempt failed too" in r.reason
    assert dom.calls.count("thaw") == 2 and dom.timeout == -1


def test_thaw_timeout_is_crash_and_nothing_thawed_means_the_hold_broke() -> None:
    _, hung = _round(FakeDom(thaw=["Guest agent is not responding: Guest agent not available for now"]))
    assert hung.consistency == "CRASH" and "thaw not confirmed" in hung.reason and hung.window_ms is not None
    _, broke = _round(FakeDom(thaw=[0]))
    assert broke.consistency == "CRASH" and "did not hold" in broke.reason


def test_nothing_frozen_is_crash_and_skip_never_calls_the_agent() -> None:
    _, r = _round(FakeDom(freeze=0, thaw=[0]))
    assert r.consistency == "CRASH" and "froze no file system" in r.reason
    dom = FakeDom()
    q = QgaQuiescer(dom, timeout_s=1)
    q.skip("the VM was paused")
    r = q.thaw()
    assert r.consistency == "CRASH" and r.reason == "the VM was paused"
    assert "freeze" not in dom.calls and "thaw" not in dom.calls


@pytest.mark.parametrize(("xml", "state"), [
    ("<domain><devices/></domain>", None),
    ("<domain><devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' "
     "state='disconnected'/></channel></devices></domain>", "disconnected"),
    ("<domain><devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
     "</devices></domain>", "defined"),
    ("<domain><devices><channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>"
     "</devices></domain>", None),
])
def test_channel_state(xml: str, state: str | None) -> None:
    assert channel_state(FakeDom(xml=xml)) == state


def test_quiescer_for_follows_the_registration(settings: Any) -> None:
    reg = made_up_registration("vm")
    dom = FakeDom()
    assert isinstance(quiescer_for(settings, reg, dom, "j1", 5), AgentQuiescer)
    qga = quiescer_for(settings, _with(reg, "qga"), dom, "j1", 5)
    assert isinstance(qga, QgaQuiescer) and qga.timeout_s == 5
    none = quiescer_for(settings, _with(reg, "none"), dom, "j1", 5)
    assert isinstance(none, NoQuiescer)
    r = none.thaw()
    assert r.consistency == "CRASH" and r.quiescer == "none" and "without a quiescer" in r.reason


def _with(reg: Any, quiescer: str) -> Any:
    """The registration with another quiescer."""
    import dataclasses

    return dataclasses.replace(reg, quiescer=quiescer)
