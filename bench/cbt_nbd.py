"""NBD plumbing for ``bench.cbt_paths``: a read-only ``qemu-nbd`` export of the base with its dirty bitmap (or a
writable one of a target) on a UNIX socket, the python3-libnbd module from Debian, and the three dirty-map
readers (libnbd block_status, ``nbdinfo --map``, ``qemu-img map`` with ``x-dirty-bitmap``)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.cbt_scenario import Extent, merge
from bench.common import run
from bench.exceptions import BenchSetupFailed
from controller.sysimport import import_system_module

MAX_REQUEST = 32 * 1024 * 1024  # qemu-nbd's largest read/write request


def import_nbd() -> ModuleType:
    """The libnbd Python module: importable directly, or from Debian's dist-packages; BenchSetupFailed if neither."""
    try:
        return import_system_module("nbd")
    except ImportError as e:
        raise BenchSetupFailed(f"python3-libnbd is not importable ({e}); apt-get install -y python3-libnbd") from e


def uri(sock: Path) -> str:
    return f"nbd+unix:///?socket={sock}"


def _listening(sock: Path) -> bool:
    """A UNIX socket accepts connections (exists is not enough: bind comes before listen)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _wait_socket(proc: subprocess.Popen[bytes], sock: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while not _listening(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise BenchSetupFailed(f"{what} did not start: {err.strip()[-300:]}")
        time.sleep(0.005)


@contextmanager
def qemu_nbd(image: Path, sock: Path, bitmap: str | None = None) -> Iterator[str]:
    """Serve `image` on a UNIX socket: read-only, force-share, with `bitmap` when given; writable otherwise.
    Yields the NBD URI; stops the server on exit."""
    sock.unlink(missing_ok=True)
    if bitmap is not None:
        spec = f"driver=qcow2,force-share=on,read-only=on,file.driver=file,file.filename={image}"
        cmd = ["qemu-nbd", "-r", "-B", bitmap, "--image-opts", spec]
    else:
        cmd = ["qemu-nbd", "-f", "qcow2", "--cache=none", "--aio=native", str(image)]
    proc = subprocess.Popen([*cmd, "-t", "-k", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_socket(proc, sock, "qemu-nbd")
        yield uri(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # seen once: qemu-nbd -t ignoring SIGTERM while draining a client
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)


def _from_pairs(pairs: list[tuple[int, int, bool]]) -> list[Extent]:
    """(offset, length, dirty) triples -> merged dirty extents."""
    return merge([(off, n) for off, n, dirty in pairs if dirty])


def map_libnbd(nbd_uri: str, bitmap: str) -> list[Extent]:
    """Dirty extents through libnbd block_status on the ``qemu:dirty-bitmap:NAME`` meta context (flag 1 = dirty)."""
    nbd = import_nbd()
    ctx = f"qemu:dirty-bitmap:{bitmap}"
    h: Any = nbd.NBD()
    h.add_meta_context(ctx)
    h.connect_uri(nbd_uri)
    try:
        if not h.can_meta_context(ctx):
            raise BenchSetupFailed(f"the server does not offer {ctx}")
        size = int(h.get_size())
        pairs: list[tuple[int, int, bool]] = []
        off = 0

        def cb(metacontext: str, start: int, entries: list[int], err: Any) -> int:
            if metacontext == ctx:
                pos = start
                for i in range(0, len(entries), 2):
                    n = min(entries[i], size - pos)
                    pairs.append((pos, n, bool(entries[i + 1] & 1)))
                    pos += n
            return 0

        while off < size:
            before = len(pairs)
            h.block_status(min(size - off, 0xFFFF_FFFF - 0xFFFF), off, cb)
            if len(pairs) == before:
                raise BenchSetupFailed(f"block_status made no progress at {off}")
            off = pairs[-1][0] + pairs[-1][1]
        return _from_pairs(pairs)
    finally:
        h.shutdown()


def map_nbdinfo(nbd_uri: str, bitmap: str) -> list[Extent]:
    """Dirty extents from ``nbdinfo --map=qemu:dirty-bitmap:NAME --json`` (type bit 1 = dirty)."""
    out = json.loads(run(["nbdinfo", f"--map=qemu:dirty-bitmap:{bitmap}", "--json", nbd_uri]))
    return _from_pairs([(int(e["offset"]), int(e["length"]), bool(int(e["type"]) & 1)) for e in out])


def map_qemu_img(sock: Path, bitmap: str) -> list[Extent]:
    """Dirty extents from ``qemu-img map`` over NBD with ``x-dirty-bitmap``: qemu reports dirty as data=false."""
    opts = f"driver=nbd,server.type=unix,server.path={sock},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}"
    out = json.loads(run(["qemu-img", "map", "--output=json", "--image-opts", opts]))
    return _from_pairs([(int(e["start"]), int(e["length"]), not e["data"]) for e in out])


MapReader = Callable[[Path, str], list[Extent]]
READERS: dict[str, MapReader] = {
    "python3-libnbd block_status": lambda sock, bm: map_libnbd(uri(sock), bm),
    "nbdinfo --map --json": lambda sock, bm: map_nbdinfo(uri(sock), bm),
    "qemu-img map x-dirty-bitmap": map_qemu_img,
}
