"""The copy pipeline: read a chunk, hash it in a worker thread, write it in another, read the next meanwhile.

The file is walked in CHUNK pieces (the checksum's chunks). A piece with no data (``SEEK_DATA``/``SEEK_HOLE``) is
never read: the checksum is told its length (``zeros``) and the destination keeps a hole there. A data piece is read
into one of BUFFERS page-aligned buffers (``O_DIRECT`` where allowed), then hashed (``Checksum.leaf`` in a pool of
HASHERS threads: hashlib releases the GIL on large buffers) and written at the same offset by the writer thread,
while the main thread reads the next ones. Results are taken in file order: leaves fed to the checksum, progress
reported, the buffer reused. Memory stays at BUFFERS x CHUNK; the destination is fsynced once, at the end.

On any failure (a read or write error, the progress callback raising to cancel) the workers are waited for and the
destination, if any, is removed before the error propagates: a failed copy leaves no file behind.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.datapath.buffers import Buffer
from controller.datapath.extents import chunk_map
from controller.datapath.files import Dest, Source

CHUNK = 4 << 20  #: one read, one buffer, one checksum chunk
BUFFERS = 8  #: chunks in flight (32 MiB)
HASHERS = max(1, min(2, os.cpu_count() or 1))  #: threads hashing chunks in parallel
HOLE_REPORT = 256 << 20  #: across holes, report progress every 256 MiB (callbacks may touch the job DB)

#: progress(bytes_done, bytes_total); raising from it cancels the copy
Progress = Callable[[int, int], None]


class Checksum(Protocol):
    """A running checksum over a file's chunks (controller.vault.digest.Digest is one)."""

    @property
    def parallel(self) -> bool:
        """True: chunks are hashed apart with leaf() and fed in order with add_leaf(); False: data() in order."""
        ...

    def leaf(self, chunk: memoryview) -> bytes:
        """One chunk's own hash (called from worker threads, several at once)."""
        ...

    def add_leaf(self, leaf: bytes) -> None:
        """Feed a chunk's leaf(), in file order."""
        ...

    def data(self, chunk: memoryview) -> None:
        """Feed a chunk's bytes, in file order (the serial algorithms)."""
        ...

    def zeros(self, n: int) -> None:
        """Feed n zero bytes (a hole, chunk-aligned at its start), in file order."""
        ...


@dataclass
class CopyResult:
    """What one pass over a file did."""

    logical_size: int
    data_bytes: int  #: bytes read (holes are not)
    stored_bytes: int  #: bytes the destination occupies after the copy (0 without one)
    direct_read: bool  #: whether the source was read with O_DIRECT


@dataclass
class _Step:
    """One piece in flight, retired in file order."""

    end: int  #: where the piece ends: progress after it is retired
    buf: Buffer | None = None  #: data piece: its buffer, reused once retired
    hashed: Future[Any] | None = None  #: leaf (parallel checksum) or None
    written: Future[None] | None = None
    zeros: int = 0  #: hole piece: its length (fed by the caller's thread when the checksum is parallel)


def copy(
    src: Path,
    dst: Path | None,
    checksum: Checksum,
    progress: Progress | None = None,
    direct: bool = True,
) -> CopyResult:
    """Checksum src and, when dst is given, copy it there sparse (created or truncated, fsynced once).

    direct=False keeps to the page cache (dropping what it read and wrote behind the copy).
    """
    source = Source(src, direct)
    try:
        dest = Dest(dst, source.size, direct) if dst is not None else None
        try:
            data, stored = _run(source, dest, checksum, progress)
        except BaseException:
            if dest is not None and dst is not None:
                dest.close()
                dst.unlink(missing_ok=True)
            raise
        finally:
            if dest is not None:
                dest.close()
        return CopyResult(source.size, data, stored, source.direct)
    finally:
        source.close()


def _run(source: Source, dest: Dest | None, checksum: Checksum, progress: Progress | None) -> tuple[int, int]:
    """The pipeline proper: (data bytes read, bytes stored)."""
    size = source.size
    parallel = checksum.parallel
    free = [Buffer(CHUNK) for _ in range(BUFFERS)]
    steps: deque[_Step] = deque()
    hashers = ThreadPoolExecutor(HASHERS if parallel else 1, thread_name_prefix="vmb-hash")
    writer = ThreadPoolExecutor(1, thread_name_prefix="vmb-write") if dest is not None else None
    hash_fn: Callable[[memoryview], bytes | None] = checksum.leaf if parallel else checksum.data

    def retire(step: _Step) -> None:
        """Take the oldest piece's results: errors raised, leaf fed, progress reported, buffer freed."""
        if step.written is not None:
            step.written.result()
        got = step.hashed.result() if step.hashed is not None else None
        if parallel and step.buf is not None and got is not None:
            checksum.add_leaf(got)
        elif parallel:
            checksum.zeros(step.zeros)
        if step.buf is not None:
            free.append(step.buf)
        if progress:
            progress(step.end, size)

    read = 0
    try:
        if progress:
            progress(0, size)
        for start, end, has_data in chunk_map(source.fd, size, CHUNK):
            if not has_data:
                for a in range(start, end, HOLE_REPORT):
                    b = min(a + HOLE_REPORT, end)
                    hz = None if parallel else hashers.submit(checksum.zeros, b - a)
                    steps.append(_Step(end=b, hashed=hz, zeros=b - a))
                continue
            while not free or (steps and _done(steps[0])):
                retire(steps.popleft())
            buf, n = free.pop(), end - start
            source.read(buf, start, n)
            read += n
            step = _Step(end=end, buf=buf, hashed=hashers.submit(hash_fn, buf.view[:n]))
            if writer is not None and dest is not None:
                step.written = writer.submit(dest.write, buf, start, n, CHUNK)
            steps.append(step)
        while steps:
            retire(steps.popleft())
        stored = dest.finish() if dest is not None else 0
    finally:
        for pool in (hashers, writer):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # no worker may touch a buffer or fd after this
    return read, stored


def _done(step: _Step) -> bool:
    """Whether a piece's work is finished (retiring it will not block)."""
    return all(f is None or f.done() for f in (step.hashed, step.written))
