"""Byte movers for ``bench.cbt_paths``: copy only the extents a dirty bitmap marks from the read-only base into an
empty qcow2 whose backing file is the parent point. Each mover is timed from nothing running to the target
flushed and closed; both open the images with O_DIRECT (``cache.direct=on``), like vmbackup's full copy."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cbt_nbd import MAX_REQUEST, import_nbd, map_libnbd, qemu_nbd
from bench.exceptions import BenchError, BenchSetupFailed

COPY_CHUNK = 8 * 1024 * 1024


class Qmp:
    """A minimal QMP client on a UNIX socket: commands in order, events kept for `wait_event`."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise BenchSetupFailed(f"no QMP monitor at {path}") from None
                time.sleep(0.005)
        self.f = self.sock.makefile("rw", encoding="utf-8")
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.f.readline()
        if not line:
            raise BenchError("QMP monitor closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cmd(self, name: str, **args: Any) -> Any:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise BenchError(f"QMP {name}: {msg['error'].get('desc')}")
            else:
                return msg.get("return")

    def wait_event(self, name: str, timeout: float = 3600.0) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    return self.events.pop(i)
            self.events.append(self._read())

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def move_blockdev_backup(base: Path, inc: Path, bitmap: str, work: Path) -> int:
    """qemu-storage-daemon: base read-only (no locking: a running QEMU may hold it) -> inc, QMP ``blockdev-backup
    sync=bitmap bitmap-mode=never`` (the bitmap is read-only, so it must not be cleared). QEMU moves the bytes;
    zeroed dirty ranges become zero clusters. Returns the job's byte count."""
    qmp_path = work / "qsd-qmp.sock"
    qmp_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            "qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=bf,filename={base},read-only=on,locking=off,"
            "cache.direct=on,aio=native",
            "--blockdev", "driver=qcow2,node-name=base,file=bf,read-only=on",
            "--blockdev", f"driver=file,node-name=tf,filename={inc},cache.direct=on,aio=native",
            "--blockdev", "driver=qcow2,node-name=target,file=tf",
            "--chardev", f"socket,id=mon,path={qmp_path},server=on,wait=off",
            "--monitor", "chardev=mon",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        qmp = Qmp(qmp_path)
        try:
            qmp.cmd(
                "blockdev-backup",
                **{"job-id": "inc", "device": "base", "target": "target", "sync": "bitmap",
                   "bitmap": bitmap, "bitmap-mode": "never", "auto-dismiss": True},
            )  # fmt: skip
            ev = qmp.wait_event("BLOCK_JOB_COMPLETED")
            if ev["data"].get("error"):
                raise BenchError(f"blockdev-backup failed: {ev['data']['error']}")
            qmp.cmd("quit")
        finally:
            qmp.close()
        if proc.wait(timeout=60) != 0:
            raise BenchError(f"qemu-storage-daemon exited {proc.returncode}")
        return int(ev["data"]["offset"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        qmp_path.unlink(missing_ok=True)


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
