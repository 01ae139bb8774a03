"""What boot-check looks at in a running guest: the serial console log and the SSH banner (booted), the agent (mTLS),
an SSH command.

"Booted" is declared at the first sufficient proof, whichever comes first: the serial console shows a getty login
prompt or systemd reaching the multi-user / graphical target, or sshd in the guest sends its banner ("SSH-2.0-...")
through the throwaway VM's port forward. Either proves the same thing: the bootloader and kernel ran, the root
filesystem was mounted and the init system brought up userspace services (a banner also needs the guest's network; a
TCP connect alone proves nothing, QEMU's user-mode NIC accepts it on the host side, so only the banner counts).
Neither proves a login works or an application runs: the agent probe and the user's check command do that."""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko

from controller.agentclient import AgentAddress, controller_tls, open_agent
from controller.errors import VmBackupError
from controller.restore.exceptions import CheckCommandTimeout
from controller.settings import Settings
from controller.ssh.client import open_client

#: a getty prompt ("debian login: ") or systemd reaching the multi-user / graphical target
BOOTED_RE = re.compile(
    r"(^|\n)\S* ?login: ?$"
    r"|Reached target.*(Multi-User System|multi-user\.target|Graphical Interface|graphical\.target)",
    re.MULTILINE,
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


@dataclass
class Probe:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str = ""
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 1)
        return out


def console_text(path: Path) -> str:
    """The console log without terminal escapes ('' if absent)."""
    try:
        return _ANSI.sub("", path.read_bytes().decode("utf-8", errors="replace"))
    except OSError:
        return ""


def console_tail(path: Path, lines: int = 25) -> str:
    """The last lines of the console log."""
    return "\n".join(console_text(path).rstrip().split("\n")[-lines:])


#: how often the console log is read, and the agent asked again, while a boot-check waits (each is cheap; the
#: boot-check's time is measured against a cold boot, so a coarse poll would show up in it)
BOOT_POLL_S = 0.25
AGENT_RETRY_S = 0.5


#: how long one SSH banner attempt may wait (connect + first bytes) while a boot-check polls
BANNER_WAIT_S = 1.0


def ssh_banner(port: int, timeout_s: float = BANNER_WAIT_S) -> str | None:
    """The SSH identification line 127.0.0.1:port sends (through the VM's port forward), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            data = s.recv(255)
    except OSError:
        return None
    return data.split(b"\r\n")[0].split(b"\n")[0].decode(errors="replace") if data.startswith(b"SSH-") else None


class BannerWatch:
    """A background thread asking 127.0.0.1:port for an SSH banner every BOOT_POLL_S until it answers or stop()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.banner: str | None = None
        self.seen_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"ssh-banner-{port}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        """Poll until a banner comes or stop() is called."""
        while not self._stop.is_set():
            banner = ssh_banner(self.port)
            if banner is not None:
                self.seen_at, self.banner = time.monotonic(), banner
                return
            self._stop.wait(BOOT_POLL_S)

    def stop(self) -> None:
        """End the polling (it ends within BANNER_WAIT_S)."""
        self._stop.set()


def wait_for_boot(path: Path, t0: float, timeout_s: float, alive: Any, ssh_port: int | None = None) -> Probe:
    """Poll the console log (and, with ssh_port, the guest's SSH banner) until the first proof of a boot (see the
    module docstring), the VM stops, or timeout."""
    watch = BannerWatch(ssh_port) if ssh_port is not None else None
    try:
        while True:
            text = console_text(path)
            m = BOOTED_RE.search(text)
            if m:
                return Probe("boot", True, f"booted: console {m.group(0).strip()!r}", time.monotonic() - t0)
            if watch is not None and watch.banner is not None and watch.seen_at is not None:
                return Probe("boot", True, f"booted: sshd answered {watch.banner!r}", watch.seen_at - t0)
            if not alive():
                return Probe("boot", False, "the VM stopped before reaching a login prompt")
            if time.monotonic() - t0 > timeout_s:
                why = f"no login prompt, multi-user target or SSH banner within {timeout_s:.0f} s"
                if not text.strip():
                    why += (
                        "; the serial console stayed empty: no bootloader or kernel ever ran "
                        "(damaged boot sector / partition table, or no bootable disk)"
                    )
                return Probe("boot", False, why)
            time.sleep(BOOT_POLL_S)
    finally:
        if watch is not None:
            watch.stop()


def check_agent(settings: Settings, port: int, vm_uuid: str, timeout_s: float) -> Probe:
    """GetInfo over mTLS on 127.0.0.1:port as the ORIGINAL VM (its cert SAN), retried until timeout.

    Each attempt opens its own client and closes it, answered or not.
    """
    t0 = time.monotonic()
    tls = controller_tls(settings)
    endpoint = AgentAddress("127.0.0.1", port, vm_uuid)
    last = ""
    while time.monotonic() - t0 < timeout_s:
        try:
            with open_agent(settings, endpoint, tls=tls) as client:
                info = client.get_info()
            return Probe("agent", True, f"GetInfo answered over mTLS (agent {info.agent_version})",
                         time.monotonic() - t0)
        except VmBackupError as e:
            last = f"{e.code}: {e.message}"
        time.sleep(AGENT_RETRY_S)
    return Probe("agent", False, f"agent not answering GetInfo within {timeout_s:.0f} s ({last})")


def wait_for_ssh_port(port: int, timeout_s: float) -> bool:
    """True once 127.0.0.1:port answers with an SSH banner."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ssh_banner(port, 5.0) is not None:
            return True
        time.sleep(1.0)
    return False


def run_command(port: int, user: str, key: Path, command: str, timeout_s: float) -> Probe:
    """Run the user's check command in the guest over SSH; ok on exit status 0 within ``timeout_s``."""
    t0 = time.monotonic()
    if not wait_for_ssh_port(port, timeout_s):
        return Probe("command", False, f"SSH on 127.0.0.1:{port} did not answer within {timeout_s:.0f} s")
    try:  # a throwaway VM: its host key is new by design
        client = open_client("127.0.0.1", port, user, key, timeout=30.0)
    except (paramiko.SSHException, OSError) as e:
        return Probe("command", False, f"SSH failed: {e}")
    try:
        transport = client.get_transport()
        if transport is None:
            raise paramiko.SSHException("no SSH transport after connect")
        chan = transport.open_session(timeout=30)
        left = timeout_s - (time.monotonic() - t0)
        status, text = exec_with_deadline(chan, command, max(left, 1.0))
    except CheckCommandTimeout as e:
        return Probe("command", False, f"{e.code}: {e.message}", time.monotonic() - t0)
    except (paramiko.SSHException, OSError) as e:
        return Probe("command", False, f"SSH failed: {e}")
    finally:
        client.close()
    detail = f"`{command}` exit {status}" + (f": {text[-300:]}" if text else "")
    return Probe("command", status == 0, detail, time.monotonic() - t0)


class _Channel(Protocol):
    """What :func:`exec_with_deadline` uses of a paramiko Channel."""

    def settimeout(self, timeout: float | None) -> None: ...
    def exec_command(self, command: str) -> None: ...
    def recv_ready(self) -> bool: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    def close(self) -> None: ...


#: output kept from a check command (the probe's detail shows the last 300 characters)
_KEEP_OUTPUT = 4096


def exec_with_deadline(chan: _Channel, command: str, timeout_s: float) -> tuple[int, str]:
    """Run ``command`` on a fresh session channel: (exit status, stdout+stderr tail).

    Output is drained while waiting (a chatty command cannot stall on a full window). If the command has not
    exited ``timeout_s`` after it started, the channel is closed and :class:`CheckCommandTimeout` raised.
    """
    deadline = time.monotonic() + timeout_s
    chan.settimeout(timeout_s)
    chan.exec_command(command)
    out = bytearray()
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            out += chan.recv_stderr(65536)
        del out[:-_KEEP_OUTPUT]
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            return chan.recv_exit_status(), out.decode(errors="replace").strip()
        if time.monotonic() >= deadline:
            chan.close()
            raise CheckCommandTimeout(
                f"`{command}` still running after {timeout_s:.0f} s; its SSH channel was closed",
                details={"command": command, "timeout_s": timeout_s},
            )
        time.sleep(0.05)
