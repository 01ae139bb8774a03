"""A qemu-storage-daemon process with its QMP monitor on stdio: start, talk, stop, and find strays after a crash.

One daemon per use, its QMP monitor on its own stdin/stdout (never a UNIX-socket monitor: QEMU 7.2 was seen stuck
in accept() with a client connected), every read bounded by a timeout, started with ``--pidfile`` in a directory
the caller names (crash recovery finds and kills a stray one with `kill_stray`) and SIGKILLed by the kernel if the
controller dies. The byte mover built on it is :mod:`controller.backup.qsd`. Usage::

    with daemon(workdir) as qmp:
        qmp.cmd("blockdev-add", driver="file", node_name="f", filename="/path")
    kill_stray(workdir)     # after a crash: [pids that were still alive]
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.backup.exceptions import StorageDaemonFailed
from controller.vault.qemuimg import die_with_parent

QSD = "qemu-storage-daemon"
PIDFILE_PREFIX = "qsd-"
CMD_TIMEOUT_S = 30.0  # any single QMP command (opening an image, a query, quit)
GRACE_S = 5.0  # SIGTERM -> SIGKILL
_STDERR_KEEP = 8192


class Qmp:
    """A QMP client on a qemu-storage-daemon's stdio pipes; events that arrive while waiting are kept in `events`."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout_s: float = CMD_TIMEOUT_S) -> None:
        """Read the greeting and negotiate capabilities (both within timeout_s)."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc, self.timeout_s = proc, timeout_s
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ, "out")
        self._sel.register(proc.stderr, selectors.EVENT_READ, "err")
        self._next(time.monotonic() + timeout_s)  # greeting
        self.cmd("qmp_capabilities")

    def close(self) -> None:
        """Forget the pipes (the daemon itself is ended by `daemon`)."""
        self._sel.close()

    def failed(self, what: str) -> StorageDaemonFailed:
        """A STORAGE_DAEMON_FAILED that carries what the daemon wrote on stderr."""
        err = self.stderr.strip()
        msg = f"{QSD} {what}" + (f": {err}" if err else "")
        return StorageDaemonFailed(msg, details={"stderr": err, "exit": self.proc.poll()})

    def _read_some(self, timeout_s: float) -> None:
        """Wait up to timeout_s for output on either pipe; stdout goes to the line buffer, stderr is kept."""
        for key, _ in self._sel.select(max(timeout_s, 0.0)):
            chunk = os.read(key.fd, 65536)
            if key.data == "err":
                if not chunk:
                    self._sel.unregister(key.fileobj)
                self.stderr = (self.stderr + chunk.decode(errors="replace"))[-_STDERR_KEEP:]
            elif not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=1)  # let its last stderr lines arrive
                self.read_stderr_rest()
                raise self.failed(f"closed its monitor (exit {self.proc.poll()})")
            else:
                self._buf += chunk

    def read_stderr_rest(self) -> None:
        """Collect whatever is left on stderr without blocking."""
        for key, _ in self._sel.select(0):
            if key.data == "err":
                self.stderr = (self.stderr + os.read(key.fd, 65536).decode(errors="replace"))[-_STDERR_KEEP:]

    def _take_line(self) -> dict[str, Any] | None:
        """One complete message from the buffer, or None."""
        line, sep, rest = self._buf.partition(b"\n")
        if not sep:
            return None
        self._buf = rest
        msg: dict[str, Any] = json.loads(line)
        return msg

    def _next(self, deadline: float) -> dict[str, Any]:
        """The next message, or STORAGE_DAEMON_FAILED once the deadline passes."""
        while (msg := self._take_line()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.failed("did not answer in time")
            self._read_some(left)
        return msg

    def cmd(self, name: str, **args: Any) -> Any:
        """Run one QMP command and return its "return"; QEMU's error ``desc`` raises STORAGE_DAEMON_FAILED."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise self.failed(f"gone before {name} ({e})") from e
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = self._next(deadline)
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                desc = str(msg["error"].get("desc", msg["error"]))
                raise StorageDaemonFailed(
                    f"{QSD} {name}: {desc}",
                    details={"command": name, "class": msg["error"].get("class"), "desc": desc,
                             "stderr": self.stderr.strip()},
                )  # fmt: skip
            elif "return" in msg:
                return msg["return"]

    def pump(self, timeout_s: float) -> None:
        """Collect the events that arrive within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            while (msg := self._take_line()) is not None:
                if "event" in msg:
                    self.events.append(msg)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._read_some(left)

    def take_event(self, name: str, **data: Any) -> dict[str, Any] | None:
        """Remove and return the first collected event `name` whose data has these values, if any."""
        for i, ev in enumerate(self.events):
            if ev.get("event") == name and all(ev.get("data", {}).get(k) == v for k, v in data.items()):
                return self.events.pop(i)
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill after GRACE_S; reap it and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


@contextmanager
def daemon(workdir: Path, timeout_s: float = CMD_TIMEOUT_S) -> Iterator[Qmp]:
    """A qemu-storage-daemon with no nodes yet and QMP on stdio, its pidfile in workdir; on a normal exit it is
    told to ``quit`` (which flushes and closes every node), on any exit it is terminated/killed if still alive."""
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir.absolute() / f"{PIDFILE_PREFIX}{secrets.token_hex(4)}.pid"
    try:
        proc = subprocess.Popen(
            [QSD, "--chardev", "stdio,id=mon", "--monitor", "chardev=mon", "--pidfile", str(pidfile)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
    except OSError as e:
        raise StorageDaemonFailed(f"cannot start {QSD}: {e}") from e
    qmp: Qmp | None = None
    try:
        qmp = Qmp(proc, timeout_s)
        yield qmp
        qmp.cmd("quit")
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise qmp.failed("did not exit after quit") from e
        if rc != 0:
            qmp.read_stderr_rest()
            raise qmp.failed(f"exited {rc} after quit")
    finally:
        _stop(proc)
        if qmp is not None:
            qmp.close()
        pidfile.unlink(missing_ok=True)


def _pid_of(pidfile: Path) -> int | None:
    """The pid of a live qemu-storage-daemon that was started with this pidfile, else None."""
    try:
        pid = int(pidfile.read_text().strip())
        argv = [os.fsdecode(a) for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    ours = any(a == "--pidfile" and os.path.basename(b) == pidfile.name for a, b in itertools.pairwise(argv))
    if os.path.basename(argv[0]) != QSD or not ours or state == "Z":
        return None
    return pid


def is_qsd_running(workdir: Path) -> list[int]:
    """The pids of the live qemu-storage-daemons whose pidfile is in workdir (empty: none)."""
    pids = [_pid_of(p) for p in sorted(workdir.glob(f"{PIDFILE_PREFIX}*.pid"))]
    return [p for p in pids if p is not None]


def kill_stray(workdir: Path) -> list[int]:
    """Crash recovery: end every qemu-storage-daemon whose pidfile is in workdir (SIGTERM, SIGKILL after GRACE_S)
    and remove the pidfiles (stale ones too); returns the pids that were alive."""
    files = sorted(workdir.glob(f"{PIDFILE_PREFIX}*.pid"))
    alive = {f: pid for f in files if (pid := _pid_of(f)) is not None}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = {f: pid for f, pid in alive.items() if _pid_of(f) == pid}
        for pid in left.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_S
        while left and time.monotonic() < deadline and any(_pid_of(f) == pid for f, pid in left.items()):
            time.sleep(0.05)
    for f in files:
        f.unlink(missing_ok=True)
    return list(alive.values())
