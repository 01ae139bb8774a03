"""The incremental copy's byte mover: a qemu-storage-daemon driven over QMP (docs/incremental-design.md).

One daemon per call (:mod:`controller.backup.qsdproc`: QMP on stdio, bounded reads, a pidfile for crash
recovery's `kill_stray`, SIGKILLed by the kernel if the controller dies). The frozen base is opened read-only
with force-share: the running QEMU holds it as a backing file. Usage::

    states = bitmaps(base_path, workdir=overlay_dir)                   # name -> BitmapState (count = dirty bytes)
    changed = backup_changed(base_path, "vmb-J1", dst, "../../P/disks/vdb.qcow2", overlay_dir, progress)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.backup.exceptions import (
    BitmapInconsistent,
    BitmapMissing,
    IncrementalCopyFailed,
    StorageDaemonFailed,
)
from controller.backup.qsdproc import CMD_TIMEOUT_S, QSD, Qmp, daemon
from controller.vault.qemuimg import (
    QEMU_IMG,
    chain_encrypted,
    image_options,
    option_args,
    run_create,
    stored_compression,
)

if TYPE_CHECKING:
    from controller.vault.keys import VaultKey

POLL_S = 0.2  # query-jobs interval while the copy runs
_JOB = "vmb-inc"

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
