"""Sparse-aware streaming copy with a checksum of the full logical content, computed on the fly.

The file is walked in 4 MiB chunks (see ``digest``). A chunk that lies wholly in holes (found with
``SEEK_DATA``/``SEEK_HOLE``) is never read: its digest is known and it stays a hole in the destination
(``ftruncate`` to the final size, then ``pwrite`` only data). Inside a data chunk, 64 KiB pieces that are
all zeros are not written either, like ``cp --sparse=always``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.vault import digest
from controller.vault.exceptions import ChecksumMismatch, DiskCopyFailed

BLOCK = digest.CHUNK
SUB = 64 << 10  # zero detection granularity inside a data chunk
HOLE_REPORT = 256 << 20  # across holes, report progress every 256 MiB (progress callbacks may touch the job DB)
_ZMV = digest.ZEROS
#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


@dataclass
class StreamResult:
    """What one pass over a file produced."""

    digest: str  # "<algo>:<hex>"
    logical_size: int
    data_bytes: int  # bytes actually read (non-hole)
    stored_bytes: int  # bytes allocated by the destination (0 when only hashing)


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) ranges covering [0, size), found with SEEK_DATA/SEEK_HOLE.

    Where SEEK_DATA is not supported (a block device: EINVAL) all of [0, size) is data; zero chunks still stay holes
    in the destination (``_write_nonzero``).
    """
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.EINVAL and pos == 0:
                yield 0, size, True
                return
            if e.errno != errno.ENXIO:
                raise
            data = size  # only a hole remains
        if data > pos:
            yield pos, min(data, size), False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole, True
        pos = hole


def _write_nonzero(fd: int, chunk: memoryview, offset: int) -> None:
    """pwrite the chunk's non-zero SUB-byte pieces (coalesced); zero pieces stay holes in the destination."""
    n = len(chunk)
    if chunk == _ZMV[:n]:
        return
    run_start = -1
    for a in range(0, n, SUB):
        b = min(a + SUB, n)
        if chunk[a:b] == _ZMV[: b - a]:
            if run_start >= 0:
                _pwrite_all(fd, chunk[run_start:a], offset + run_start)
                run_start = -1
        elif run_start < 0:
            run_start = a
    if run_start >= 0:
        _pwrite_all(fd, chunk[run_start:], offset + run_start)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of [0, size) that hold data."""
    return [(a, b) for a, b, is_data in extents(fd, size) if is_data]


def stream(
    src: Path, dst: Path | None = None, progress: Progress | None = None, algo: str = digest.DEFAULT_ALGO
) -> StreamResult:
    """Checksum src (and copy it sparse to dst when given, fsynced); dst is created or truncated."""
    h = digest.new(algo)
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    read = 0
    with open(src, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for a block device (an LVM volume, a raw disk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        data = data_extents(fd, size)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640) if dst is not None else -1
        try:
            if dfd >= 0:
                os.ftruncate(dfd, size)
            if progress:
                progress(0, size)
            j = reported = 0
            for pos in range(0, size, BLOCK):
                end = min(pos + BLOCK, size)
                while j < len(data) and data[j][1] <= pos:
                    j += 1
                if j == len(data) or data[j][0] >= end:  # no data in this chunk: a hole, never read
                    h.zeros(end - pos)
                    if progress and (end - reported >= HOLE_REPORT or end == size):
                        reported = end
                        progress(end, size)
                    continue
                n = os.preadv(fd, [mv[: end - pos]], pos)
                if n != end - pos:
                    raise DiskCopyFailed(f"{src} shrank while being read (at offset {pos + n})")
                chunk = mv[:n]
                h.data(chunk)
                if dfd >= 0:
                    _write_nonzero(dfd, chunk, pos)
                read += n
                if progress:
                    reported = end
                    progress(end, size)
            stored = 0
            if dfd >= 0:
                os.fsync(dfd)
                stored = os.fstat(dfd).st_blocks * 512
        finally:
            if dfd >= 0:
                os.close(dfd)
    return StreamResult(digest=h.hexdigest(), logical_size=size, data_bytes=read, stored_bytes=stored)


def copy_verified(
    src: Path, dst: Path, expected: str, name: str, progress: Progress | None = None
) -> StreamResult:
    """Copy src to dst sparse, checking the recorded checksum; on mismatch remove dst, raise CHECKSUM_MISMATCH."""
    try:
        res = stream(src, dst, progress, algo=digest.algo_of(expected))
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    if res.digest != expected:
        dst.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"disk {name}: stored file {src} has checksum {res.digest[:26]}..., the manifest says {expected[:26]}...",
            details={"disk": name, "file": str(src), "expected": expected, "actual": res.digest},
        )
    return res
