"""boot-check's --check-command honours its deadline: a command that never exits is cut off, not waited on.

paramiko's SSHClient is replaced by a fake whose session channel never reports an exit status (like
``sleep infinity`` in the guest), so the deadline logic is tested host-only in about a second.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from controller.restore import probes


class FakeChannel:
    """A session channel: its command exits after ``exits_after_s`` (None: never), writing ``output`` first."""

    def __init__(self, exits_after_s: float | None, output: bytes = b"", status: int = 0) -> None:
        self.exits_after_s, self.output, self.status = exits_after_s, output, status
        self.started: float | None = None
        self.closed = threading.Event()
        self.command = ""

    def _exited(self) -> bool:
        assert self.started is not None
        return self.exits_after_s is not None and time.monotonic() - self.started >= self.exits_after_s

    def settimeout(self, timeout: float | None) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command, self.started = command, time.monotonic()

    def recv_ready(self) -> bool:
        return self._exited() and bool(self.output)

    def recv(self, nbytes: int) -> bytes:
        data, self.output = self.output[:nbytes], self.output[nbytes:]
        return data

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, nbytes: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return self._exited()

    def recv_exit_status(self) -> int:
        # like paramiko: block until the status arrives (or the channel is closed)
        while not self._exited() and not self.closed.wait(0.05):
            if time.monotonic() - (self.started or 0) > 30:
                raise AssertionError("recv_exit_status waited 30 s on a command that never exits")
        return self.status if self._exited() else -1

    def close(self) -> None:
        self.closed.set()


class FakeStream:
    def __init__(self, chan: FakeChannel) -> None:
        self.channel = chan

    def read(self) -> bytes:
        return b""


class FakeClient:
    """The parts of paramiko.SSHClient that run_command may use, over one FakeChannel."""

    chan: FakeChannel

    def set_missing_host_key_policy(self, policy: Any) -> None:
        pass

    def connect(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_transport(self) -> Any:
        chan = self.chan

        class Transport:
            def open_session(self, timeout: float | None = None) -> FakeChannel:
                return chan

        return Transport()

    def exec_command(self, command: str, timeout: float | None = None) -> tuple[Any, FakeStream, FakeStream]:
        self.chan.exec_command(command)
        return None, FakeStream(self.chan), FakeStream(self.chan)

    def close(self) -> None:
        self.chan.close()


@pytest.fixture
def fake_ssh(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(probes, "wait_for_ssh_port", lambda port, timeout_s: True)
    monkeypatch.setattr(paramiko, "SSHClient", FakeClient)
    return FakeClient


@pytest.mark.timeout(60)
def test_command_that_never_exits_is_cut_off_at_the_deadline(fake_ssh: type[FakeClient]) -> None:
    """A failed probe naming CHECK_COMMAND_TIMEOUT after ~timeout_s, and the channel is closed."""
    fake_ssh.chan = FakeChannel(exits_after_s=None)
    t0 = time.monotonic()
    probe = probes.run_command(2222, "root", Path("/nonexistent"), "sleep infinity", timeout_s=1.0)
    took = time.monotonic() - t0
    assert not probe.ok and probe.name == "command"
    assert probe.detail.startswith("CHECK_COMMAND_TIMEOUT: `sleep infinity` still running after 1 s")
    assert 0.9 <= took < 3.0, took
    assert fake_ssh.chan.closed.is_set()


@pytest.mark.timeout(60)
def test_command_that_exits_in_time_reports_status_and_output(fake_ssh: type[FakeClient]) -> None:
    """Within the deadline the exit status decides, and the output tail is in the detail."""
    fake_ssh.chan = FakeChannel(exits_after_s=0.2, output=b"x" * 10000 + b" fs ok\n", status=3)
    probe = probes.run_command(2222, "root", Path("/nonexistent"), "check-fs", timeout_s=5.0)
    assert not probe.ok
    assert probe.detail.startswith("`check-fs` exit 3: ") and probe.detail.endswith("fs ok")
    fake_ssh.chan = FakeChannel(exits_after_s=0.1, status=0)
    assert probes.run_command(2222, "root", Path("/nonexistent"), "true", timeout_s=5.0).ok
