"""Byte movers for ``bench.cbt_paths``: copy only the extents a dirty bitmap marks from the read-only base into an
empty qcow2 whose backing file is the parent point. Each mover is timed from nothing running to the target
flushed and closed; both open the images with O_DIRECT (``cache.direct=on``), like vmbackup's full copy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.cbt_nbd import MAX_REQUEST, import_nbd, map_libnbd, qemu_nbd
from bench.exceptions import BenchError, BenchSetupFailed

COPY_CHUNK = 8 * 1024 * 1024


class Qmp:
    """A minimal QMP client on a qemu-storage-daemon's stdin/stdout (``--chardev stdio``): commands in order,
    events kept for `wait_event`. Pipes, not a UNIX socket: with a socket monitor, qsd 7.2 was seen (once in ~200
    runs) blocked in accept() on its listener with our client connected, so neither side moved."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        if proc.stdin is None or proc.stdout is None:
            raise BenchSetupFailed("qemu-storage-daemon has no stdio pipes")
        self.proc, self.w, self.r = proc, proc.stdin, proc.stdout
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.r.readline()
        if not line:
            raise BenchError(f"qemu-storage-daemon closed its monitor (exit {self.proc.poll()})")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cmd(self, name: str, **args: Any) -> Any:
        self.w.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.w.flush()
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise BenchError(f"QMP {name}: {msg['error'].get('desc')}")
            else:
                return msg.get("return")

    def wait_event(self, name: str) -> dict[str, Any]:
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    return self.events.pop(i)
            self.events.append(self._read())


@contextmanager
def qsd(*blockdevs: str) -> Iterator[Qmp]:
    """A qemu-storage-daemon with these ``--blockdev`` nodes and its QMP monitor on stdio; on exit ``quit`` and
    wait for it (killed if it does not exit within 30 s)."""
    args = [a for b in blockdevs for a in ("--blockdev", b)]
    proc = subprocess.Popen(
        ["qemu-storage-daemon", *args, "--chardev", "stdio,id=mon", "--monitor", "chardev=mon"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        qmp = Qmp(proc)
        yield qmp
        qmp.cmd("quit")
        if proc.wait(timeout=30) != 0:
            raise BenchError(f"qemu-storage-daemon exited {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def move_blockdev_backup(base: Path, inc: Path, bitmap: str, work: Path) -> int:
    """qemu-storage-daemon: base read-only (no locking: a running QEMU may hold it) -> inc, QMP ``blockdev-backup
    sync=bitmap bitmap-mode=never`` (the bitmap is read-only, so it must not be cleared). QEMU moves the bytes;
    zeroed dirty ranges become zero clusters. Returns the job's byte count. (`work` is unused: no sockets.)"""
    with qsd(
        f"driver=file,node-name=bf,filename={base},read-only=on,locking=off,cache.direct=on,aio=native",
        "driver=qcow2,node-name=base,file=bf,read-only=on",
        f"driver=file,node-name=tf,filename={inc},cache.direct=on,aio=native",
        "driver=qcow2,node-name=target,file=tf",
    ) as qmp:
        qmp.cmd(
            "blockdev-backup",
            **{"job-id": "inc", "device": "base", "target": "target", "sync": "bitmap",
               "bitmap": bitmap, "bitmap-mode": "never", "auto-dismiss": True},
        )  # fmt: skip
        ev = qmp.wait_event("BLOCK_JOB_COMPLETED")
        if ev["data"].get("error"):
            raise BenchError(f"blockdev-backup failed: {ev['data']['error']}")
    return int(ev["data"]["offset"])


def bitmap_counts(base: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Every bitmap of `base` as qemu-storage-daemon reports it (``query-named-block-nodes``: name, granularity,
    count = dirty bytes, inconsistent when set), the base opened read-only with force-share."""
    with qsd(f"driver=qcow2,node-name=base,read-only=on,force-share=on,file.driver=file,file.filename={base}") as qmp:
        nodes = qmp.cmd("query-named-block-nodes", flat=True)
    node = next(n for n in nodes if n["node-name"] == "base")
    return {b["name"]: b for b in node.get("dirty-bitmaps", [])}


def move_libnbd(base: Path, inc: Path, bitmap: str, work: Path) -> int:
    """python3-libnbd: read the dirty map, pread each extent (COPY_CHUNK at a time) from the base's read-only export
    and pwrite it (or a zero request for all-zero chunks) into a writable qemu-nbd export of inc; flush.
    Returns the bytes moved."""
    nbd = import_nbd()
    moved = 0
    zero = bytes(COPY_CHUNK)
    with qemu_nbd(base, work / "mv-src.sock", bitmap) as src_uri, qemu_nbd(inc, work / "mv-dst.sock") as dst_uri:
        extents = map_libnbd(src_uri, bitmap)
        src: Any = nbd.NBD()
        dst: Any = nbd.NBD()
        src.connect_uri(src_uri)
        dst.connect_uri(dst_uri)
        try:
            for off, n in extents:
                end = off + n
                while off < end:
                    k = min(COPY_CHUNK, MAX_REQUEST, end - off)
                    buf = src.pread(k, off)
                    if buf == zero[:k]:
                        dst.zero(k, off)
                    else:
                        dst.pwrite(buf, off)
                    off += k
                    moved += k
            dst.flush()
        finally:
            src.shutdown()
            dst.shutdown()
    return moved


Mover = Callable[[Path, Path, str, Path], int]
MOVERS: dict[str, Mover] = {
    "qemu-storage-daemon blockdev-backup sync=bitmap": move_blockdev_backup,
    "python3-libnbd pread -> qemu-nbd pwrite": move_libnbd,
}
