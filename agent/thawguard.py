"""The thaw guard: a small process, separate from the RPC process, that thaws what the agent froze if it dies.

The agent starts it once at startup (``python -B -m agent.thawguard FD``, its own session, imports done before
any freeze) and talks to it over a ``SOCK_SEQPACKET`` socket pair. Before the first FIFREEZE the agent sends
``ARM`` with one descriptor per mount point it is about to freeze (freeze order) and waits for ``OK``; after the
freeze it sends ``START HOLD_S`` (the deadline restarts from there); after its own thaw it sends ``DISARM`` and
learns how many filesystems the guard had to thaw itself (0: the freeze held until the agent's thaw).

The guard thaws every armed descriptor (FITHAW, reverse order; EINVAL = not frozen) when:

- the agent's end of the socket closes (the agent died: SIGKILL, OOM kill, crash) - at once;
- the deadline passes without ``DISARM`` (the agent is alive but stuck);
- it receives SIGTERM (systemd stops the unit's remaining processes after the agent died).

While armed it touches no filesystem: it only waits on the socket, calls ioctl on descriptors it already holds
and writes one line to stderr (journald) after the thaw. It exits when the agent's end closes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from agent.exceptions import FreezeFailed
from agent.quiesce import mounts as mountlib
from agent.quiesce.fsfreeze import FITHAW

log = logging.getLogger("vmbackup.agent.thawguard")

#: Added to the hold time for the guard's own deadline, so the agent's in-process watchdog thaws first.
GRACE_S = 2.0
#: How long the agent waits for the guard's answer to ARM, PING and DISARM.
REPLY_TIMEOUT_S = 5.0
_MAX_FDS = 64

IoctlFn = Callable[[int, int, int], object]


def thaw_fds(fds: list[int], ioctl: IoctlFn = fcntl.ioctl) -> tuple[int, list[str]]:
    """FITHAW ``fds`` in reverse order: (how many were frozen and are thawed now, errors). Never raises."""
    thawed, errors = 0, []
    for fd in reversed(fds):
        try:
            ioctl(fd, FITHAW, 0)
            thawed += 1
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not frozen
                errors.append(f"fd {fd}: {exc.strerror or exc}")
    return thawed, errors


def thaw_all_eligible(mountinfo: Path = Path("/proc/self/mountinfo"),
                      ioctl: IoctlFn = fcntl.ioctl) -> tuple[list[str], list[str]]:
    """FITHAW every freezable mount (reverse freeze order): (mount points that were frozen, errors).

    The agent calls it first thing at start, before it writes anything: a predecessor that was killed while
    frozen (and whose guard died with it, e.g. the unit's whole cgroup was SIGKILLed) left them frozen.
    """
    plan, _ = mountlib.freeze_plan(mountlib.read_mounts(mountinfo))
    was_frozen: list[str] = []
    errors: list[str] = []
    for mount in reversed(plan):
        try:
            fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            errors.append(f"{mount.mount_point}: {exc.strerror or exc}")
            continue
        try:
            n, errs = thaw_fds([fd], ioctl)
        finally:
            os.close(fd)
        if n:
            was_frozen.append(mount.mount_point)
        errors += [f"{mount.mount_point}: {e}" for e in errs]
    return was_frozen, errors


class GuardLoop:
    """The guard process's state machine (the socket is the only thing it reads)."""

    def __init__(self, sock: socket.socket, ioctl: IoctlFn = fcntl.ioctl,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.ioctl = ioctl
        self.clock = clock
        self.held: list[int] = []
        self.deadline: float | None = None
        self.fired = 0  # filesystems the guard thawed itself since the last ARM

    def fire(self, why: str) -> None:
        """Thaw everything armed, then (only then) say so on stderr."""
        if not self.held:
            return
        n, errors = thaw_fds(self.held, self.ioctl)
        self.fired += n
        self._release()
        _say(f"vmbackup-agent thaw guard: {why}: thawed {n} filesystem(s)"
             + (f"; errors: {errors}" if errors else ""))

    def _release(self) -> None:
        """Close the armed descriptors and clear the deadline (safe to repeat, e.g. from the SIGTERM handler)."""
        held, self.held, self.deadline = self.held, [], None
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)

    def step(self) -> bool:
        """Wait for one message or the deadline; False when the agent's end closed (thawed by then)."""
        timeout = None if self.deadline is None else max(0.0, self.deadline - self.clock())
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            self.fire("no DISARM before the deadline")
            return True
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, 256, _MAX_FDS)
        except ConnectionResetError:
            msg, fds = b"", []
        if not msg:
            self.fire("the agent is gone")
            return False
        self.handle(msg.decode("ascii", "replace").split(), fds)
        return True

    def handle(self, words: list[str], fds: list[int]) -> None:
        """Apply one command; ARM/PING/DISARM are answered."""
        cmd = words[0] if words else ""
        if cmd == "ARM" and len(words) == 2:
            self.fire("re-armed while armed")
            self.held, self.fired = list(fds), 0
            self.deadline = self.clock() + float(words[1])
            self.sock.send(b"OK")
            return
        for fd in fds:  # descriptors only come with ARM
            os.close(fd)
        if cmd == "START" and len(words) == 2 and self.held:
            self.deadline = self.clock() + float(words[1])
        elif cmd == "DISARM":
            self._release()
            self.sock.send(f"DISARMED {self.fired}".encode())
            self.fired = 0
        elif cmd == "PING":
            self.sock.send(b"PONG")

    def run(self) -> None:
        """Serve until the agent's end closes; SIGTERM thaws and exits."""
        def on_term(_signum: int, _frame: FrameType | None) -> None:
            self.fire("SIGTERM")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while self.step():
            pass


def _say(line: str) -> None:
    """One line to stderr, never raising (stderr is journald's socket under systemd)."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


class ThawGuard:
    """The agent's side: starts the guard process and arms/disarms it around each freeze."""

    def __init__(self, python: str = sys.executable, reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.python = python
        self.reply_timeout_s = reply_timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The guard process's pid (None before start)."""
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Spawn the guard (own session, so a signal to the agent's process group does not reach it)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [self.python, "-B", "-m", "agent.thawguard", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        finally:
            theirs.close()
        mine.settimeout(self.reply_timeout_s)
        self._sock = mine
        self._ask(b"PING", b"PONG")  # its imports are done: nothing is read from disk once armed
        log.info("thaw guard running (pid %d)", self._proc.pid)

    def arm(self, fds: list[int], hold_s: float) -> None:
        """Hand over the descriptors about to be frozen; FreezeFailed when the guard cannot take them."""
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    log.warning("thaw guard not running; starting it")
                    self.close()
                    self.start()
                assert self._sock is not None
                socket.send_fds(self._sock, [f"ARM {hold_s + GRACE_S:.3f}".encode()], fds)
                self._expect(b"OK")
            except OSError as exc:
                raise FreezeFailed(f"the thaw guard (which thaws if the agent dies) is not available: {exc}") from exc

    def started(self, hold_s: float) -> None:
        """The freeze is complete: the guard's deadline is ``hold_s`` + grace from now."""
        with self._lock:
            try:
                if self._sock is not None:
                    self._sock.send(f"START {hold_s + GRACE_S:.3f}".encode())
            except OSError as exc:
                log.error("thaw guard unreachable after the freeze: %s", exc)

    def disarm(self) -> int:
        """After our own thaw: how many filesystems the guard thawed before us (-1: guard unreachable)."""
        with self._lock:
            try:
                reply = self._ask(b"DISARM", b"DISARMED")
                return int(reply.split()[1])
            except (OSError, ValueError, IndexError) as exc:
                log.error("thaw guard unreachable at thaw: %s", exc)
                return -1

    def close(self) -> None:
        """Close our end (the guard exits) and reap it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=self.reply_timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _ask(self, msg: bytes, prefix: bytes) -> bytes:
        """Send ``msg`` and return the answer, which must start with ``prefix``."""
        if self._sock is None:
            raise OSError(errno.ENOTCONN, "the thaw guard is not started")
        self._sock.send(msg)
        return self._expect(prefix)

    def _expect(self, prefix: bytes) -> bytes:
        """Receive one answer starting with ``prefix``."""
        assert self._sock is not None
        reply = self._sock.recv(256)
        if not reply.startswith(prefix):
            raise OSError(errno.EPROTO, f"thaw guard answered {reply!r}, expected {prefix!r}")
        return reply


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.thawguard FD``: serve the agent on socket FD until it closes."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    sock.setblocking(True)
    GuardLoop(sock).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
