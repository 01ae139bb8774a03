"""The incremental copy's byte mover: a qemu-storage-daemon driven over QMP (docs/incremental-design.md).

One daemon per call, its QMP monitor on its own stdin/stdout (never a UNIX-socket monitor: QEMU 7.2 was seen
stuck in accept() with a client connected), every read bounded by a timeout, started with ``--pidfile`` in a
directory the caller names (crash recovery finds and kills a stray one with `kill_stray`) and SIGKILLed by the
kernel if the controller dies. The frozen base is opened read-only with force-share: the running QEMU holds it as
a backing file. Usage::

    states = bitmaps(base_path, workdir=overlay_dir)                   # name -> BitmapState (count = dirty bytes)
    changed = backup_changed(base_path, "vmb-J1", dst, "../../P/disks/vdb.qcow2", overlay_dir, progress)
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.backup.exceptions import (
    BitmapInconsistent,
    BitmapMissing,
    IncrementalCopyFailed,
    StorageDaemonFailed,
)
from controller.vault.qemuimg import (
    QEMU_IMG,
    chain_encrypted,
    die_with_parent,
    image_options,
    option_args,
    run_create,
    stored_compression,
)

if TYPE_CHECKING:
    from controller.vault.keys import VaultKey

QSD = "qemu-storage-daemon"
PIDFILE_PREFIX = "qsd-"
CMD_TIMEOUT_S = 30.0  # any single QMP command (opening an image, a query, quit)
POLL_S = 0.2  # query-jobs interval while the copy runs
GRACE_S = 5.0  # SIGTERM -> SIGKILL
_JOB = "vmb-inc"
_STDERR_KEEP = 8192

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BitmapState:
    """One dirty bitmap of an image as QEMU reports it (``query-named-block-nodes`` ``dirty-bitmaps``)."""

    name: str
    granularity: int
    count: int  # dirty bytes
    persistent: bool
    inconsistent: bool
    recording: bool = True
    busy: bool = False


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


def _file_node(path: str, direct: bool, read_only: bool) -> dict[str, Any]:
    """A protocol node for a local file (O_DIRECT + native AIO when `direct`)."""
    node: dict[str, Any] = {"driver": "file", "filename": path}
    if direct:
        node.update({"cache": {"direct": True}, "aio": "native"})
    if read_only:
        node.update({"read-only": True, "force-share": True})
    return node


def _add(qmp: Qmp, make: Callable[[bool], dict[str, Any]]) -> None:
    """blockdev-add make(direct=True); where the filesystem refuses O_DIRECT (EINVAL), make(direct=False)."""
    try:
        qmp.cmd("blockdev-add", **make(True))
    except StorageDaemonFailed as e:
        if "Invalid argument" not in str(e.details.get("desc", "")):
            raise
        qmp.cmd("blockdev-add", **make(False))


def _add_base(qmp: Qmp, image: str, fmt: str) -> None:
    """Open `image` as node "base": read-only, force-share (no lock is taken or checked), O_DIRECT if possible."""
    _add(qmp, lambda direct: {"driver": fmt, "node-name": "base", "read-only": True, "force-share": True,
                              "file": _file_node(image, direct, read_only=True)})  # fmt: skip


def _node(qmp: Qmp, name: str) -> dict[str, Any]:
    """The ``query-named-block-nodes`` entry of one node."""
    for n in qmp.cmd("query-named-block-nodes", flat=True):
        if n.get("node-name") == name:
            node: dict[str, Any] = n
            return node
    raise StorageDaemonFailed(f"{QSD} has no node {name!r}")


def _states(node: dict[str, Any]) -> dict[str, BitmapState]:
    """name -> BitmapState of every named dirty bitmap of a node (QEMU 7.2 field names)."""
    return {
        b["name"]: BitmapState(
            name=str(b["name"]),
            granularity=int(b["granularity"]),
            count=int(b["count"]),
            persistent=bool(b.get("persistent", False)),
            inconsistent=bool(b.get("inconsistent", False)),
            recording=bool(b.get("recording", True)),
            busy=bool(b.get("busy", False)),
        )
        for b in node.get("dirty-bitmaps", [])
        if "name" in b
    }


def bitmaps(image: str, fmt: str = "qcow2", *, workdir: Path) -> dict[str, BitmapState]:
    """Every named dirty bitmap of `image` (opened read-only, force-share), by name."""
    with daemon(workdir) as qmp:
        _add_base(qmp, image, fmt)
        return _states(_node(qmp, "base"))


def _create_target(dst: Path, backing: str, size: int, compression: str, key: VaultKey | None = None) -> None:
    """An empty qcow2 at dst over `backing` (relative to dst's directory, format qcow2), with the vault's creation
    options for `compression` and, with a vault key, LUKS encryption (qemuimg.image_options)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    opts = [*(["--object", key.secret_object()] if key else []), *option_args(image_options(compression, key))]
    cmd = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, *opts, str(dst), str(size)]
    p = run_create(cmd, timeout_s=CMD_TIMEOUT_S)  # a LUKS header may need another try (qemuimg.PBKDF_FLAKE_MESSAGE)
    if p.returncode != 0:
        err = p.stderr.strip()
        raise IncrementalCopyFailed(f"cannot create {dst} over {backing}: {err}", details={"stderr": err})


def _job(qmp: Qmp) -> dict[str, Any]:
    """Our job's ``query-jobs`` entry."""
    for j in qmp.cmd("query-jobs"):
        if j.get("id") == _JOB:
            job: dict[str, Any] = j
            return job
    raise StorageDaemonFailed(f"{QSD} lost job {_JOB}")


def _wait_concluded(qmp: Qmp, deadline: float, progress: Progress | None) -> dict[str, Any]:
    """Poll the job every POLL_S (reporting progress) until it concludes; its last ``query-jobs`` entry."""
    while True:
        job = _job(qmp)
        if job["status"] == "concluded":
            return job
        if progress is not None:
            progress(int(job.get("current-progress", 0)), int(job.get("total-progress", 0)))
        if time.monotonic() >= deadline:
            raise IncrementalCopyFailed(f"{QSD} job {_JOB} did not finish in time")
        qmp.pump(POLL_S)
        qmp.take_event("JOB_STATUS_CHANGE", id=_JOB, status="concluded")  # the next query-jobs sees it


def _cancel(qmp: Qmp) -> None:
    """Cancel the job and wait (bounded) for it to conclude, then dismiss it; best effort, the caller re-raises."""
    with contextlib.suppress(StorageDaemonFailed):
        qmp.cmd("job-cancel", id=_JOB)
    with contextlib.suppress(StorageDaemonFailed):
        _wait_concluded(qmp, time.monotonic() + CMD_TIMEOUT_S, None)
        qmp.cmd("job-dismiss", id=_JOB)


def _copy(
    qmp: Qmp,
    bitmap: str,
    dst: Path,
    deadline: float,
    progress: Progress | None,
    compress: bool,
    key: VaultKey | None = None,
) -> int:
    """Open dst as node "target" and run the sync=bitmap backup job from "base" into it; the job's total bytes.
    compress: the job writes compressed clusters (each in the target's compression_type; QEMU writes a cluster
    that does not shrink uncompressed). key: dst is LUKS-encrypted with it (its secret object-added before)."""
    # dst's backing chain is opened too (read-only, the default): a write covering part of a target cluster then
    # fills the rest from the parent (with backing: null, zeros). The job writes whole clusters, so backing: null
    # measured identical too; the opened chain is the one that is right whatever the cluster sizes. Where the
    # chain holds an encrypted file (the vault key's points) it is not opened: backing null, as measured identical.
    extra: dict[str, Any] = {"encrypt": {"format": "luks", "key-secret": key.secret_id}} if key else {}
    if key is not None or chain_encrypted(dst):
        extra["backing"] = None
    _add(qmp, lambda direct: {"driver": "qcow2", "node-name": "target",
                              "file": _file_node(str(dst), direct, read_only=False), **extra})  # fmt: skip
    qmp.cmd("blockdev-backup", **{"job-id": _JOB, "device": "base", "target": "target", "sync": "bitmap",
                                  "bitmap": bitmap, "bitmap-mode": "never", "auto-dismiss": False,
                                  "compress": compress})  # fmt: skip
    try:
        job = _wait_concluded(qmp, deadline, progress)
    except BaseException:
        _cancel(qmp)
        raise
    qmp.cmd("job-dismiss", id=_JOB)
    if job.get("error"):
        err = str(job["error"])
        raise IncrementalCopyFailed(f"copy of the changed blocks into {dst} failed: {err}", details={"stderr": err})
    return int(job.get("total-progress", 0))


def backup_changed(
    base: str,
    bitmap: str,
    dst: Path,
    backing: str,
    workdir: Path,
    progress: Progress | None = None,
    timeout_s: float = 3600,
    compression: str = "none",
    key: VaultKey | None = None,
) -> int:
    """Copy the clusters `bitmap` marks dirty in the qcow2 `base` into a new qcow2 `dst` whose backing file is
    `backing` (relative to dst's directory): dst over backing then reads like base. Returns the bitmap's count
    (changed bytes). progress(done, total) is called every ~POLL_S; if it raises, the job is cancelled and the
    exception re-raised. dst is left for the caller to remove on any failure. BITMAP_MISSING/BITMAP_INCONSISTENT
    before any copy; INCREMENTAL_COPY_FAILED with QEMU's message (details["stderr"]) if the copy fails.
    compression "zstd": dst is a compression_type=zstd qcow2 and the changed clusters are stored compressed.
    key: dst is LUKS-encrypted with this vault key (QEMU reads it from the key file: object-add of a secret)."""
    where = {"disk": base, "bitmap": bitmap, "dst": str(dst)}
    compression = stored_compression(compression, key)  # never compressed clusters in an encrypted qcow2
    try:
        with daemon(workdir) as qmp:
            _add_base(qmp, base, "qcow2")
            node = _node(qmp, "base")
            state = _states(node).get(bitmap)
            if state is None:
                raise BitmapMissing(f"disk {base} has no dirty bitmap {bitmap!r}", details=where)
            if state.inconsistent:
                raise BitmapInconsistent(f"dirty bitmap {bitmap!r} of disk {base} is inconsistent", details=where)
            _create_target(dst, backing, int(node["image"]["virtual-size"]), compression, key)
            if key is not None:
                qmp.cmd("object-add", **key.secret_qmp())
            # nothing dirty: the empty overlay already reads like the base
            deadline, compress = time.monotonic() + timeout_s, compression == "zstd"
            total = _copy(qmp, bitmap, dst, deadline, progress, compress, key) if state.count else 0
    except IncrementalCopyFailed as e:
        e.details.update(where)
        raise
    except StorageDaemonFailed as e:
        raise IncrementalCopyFailed(f"incremental copy of {base}: {e.message}", details={**e.details, **where}) from e
    _fsync(dst)
    if progress is not None:
        progress(total, total)
    return state.count


def _fsync(path: Path) -> None:
    """fsync one file (the daemon flushed it on quit; this makes it durable whatever the cache mode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
