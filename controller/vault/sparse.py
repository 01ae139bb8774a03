"""Sparse-aware streaming copy with SHA-256 of the full logical content, computed on the fly.

Holes (found with ``SEEK_DATA``/``SEEK_HOLE``) are never read: they are hashed as zeros and left as holes in
the destination (``ftruncate`` to the final size, then ``pwrite`` only the data). Data blocks that are all
zeros are treated the same way, like ``cp --sparse=always``. Reads and writes go in 8 MiB blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.vault.exceptions import ChecksumMismatch, DiskCopyFailed

BLOCK = 8 << 20
_ZERO = bytes(BLOCK)
_ZMV = memoryview(_ZERO)
#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


@dataclass
class StreamResult:
    """What one pass over a file produced."""

    sha256: str
    logical_size: int
    data_bytes: int  # bytes actually read (non-hole)
    stored_bytes: int  # bytes allocated by the destination (0 when only hashing)


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) ranges covering [0, size), found with SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
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


def _hash_zeros(h: hashlib._Hash, n: int) -> None:
    """Feed n zero bytes to the hash without touching the disk."""
    while n:
        k = min(n, BLOCK)
        h.update(_ZMV[:k])
        n -= k


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def stream(src: Path, dst: Path | None = None, progress: Progress | None = None) -> StreamResult:
    """Hash src (and copy it sparse to dst when given, fsynced); dst is created or truncated."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    done = read = 0
    with open(src, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640) if dst is not None else -1
        try:
            if dfd >= 0:
                os.ftruncate(dfd, size)
            if progress:
                progress(0, size)
            for start, end, is_data in extents(fd, size):
                if not is_data:
                    _hash_zeros(h, end - start)
                    done += end - start
                    if progress:
                        progress(done, size)
                    continue
                pos = start
                while pos < end:
                    f.seek(pos)
                    n = f.readinto(mv[: min(BLOCK, end - pos)])
                    if not n:
                        raise DiskCopyFailed(f"{src} shrank while being read (at offset {pos})")
                    chunk = mv[:n]
                    h.update(chunk)
                    if dfd >= 0 and not buf.startswith(_ZMV[:n]):
                        _pwrite_all(dfd, chunk, pos)
                    pos += n
                    read += n
                    done += n
                    if progress:
                        progress(done, size)
            stored = 0
            if dfd >= 0:
                os.fsync(dfd)
                stored = os.fstat(dfd).st_blocks * 512
        finally:
            if dfd >= 0:
                os.close(dfd)
    return StreamResult(sha256=h.hexdigest(), logical_size=size, data_bytes=read, stored_bytes=stored)


def copy_verified(
    src: Path, dst: Path, expected_sha256: str, name: str, progress: Progress | None = None
) -> StreamResult:
    """Copy src to dst sparse, checking the SHA-256; on mismatch remove dst, raise CHECKSUM_MISMATCH."""
    try:
        res = stream(src, dst, progress)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    if res.sha256 != expected_sha256:
        dst.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"disk {name}: stored file {src} has sha256 {res.sha256[:16]}..., "
            f"the manifest says {expected_sha256[:16]}...",
            details={"disk": name, "file": str(src), "expected": expected_sha256, "actual": res.sha256},
        )
    return res
