"""How well a file's data compresses, estimated from a few samples before deciding to compress it.

``compressed_fraction`` reads SAMPLES pieces of SAMPLE_BYTES spread evenly over the file's data extents (holes are
never read: they cost nothing either way) and compresses each with zlib at its fastest level, a stand-in for
qcow2's zstd (both are LZ77 coders: data one cannot shrink, the other cannot either). The pieces are read by
THREADS threads at once (a cold disk's seeks overlap; zlib releases the GIL): ~8 MiB, tens of milliseconds, whatever
the disk size.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from controller.datapath.extents import data_extents

SAMPLES = 32  #: pieces read
SAMPLE_BYTES = 256 << 10  #: bytes per piece (four 64 KiB qcow2 clusters)
THREADS = 8  #: pieces read at once


def _offsets(data: list[tuple[int, int]], samples: int, length: int) -> list[tuple[int, int]]:
    """(offset, length) of `samples` pieces spread evenly over the data extents (fewer when there is less data)."""
    total = sum(b - a for a, b in data)
    if total == 0:
        return []
    step = max(total // samples, 1)
    out: list[tuple[int, int]] = []
    pos = 0  # position within the concatenated data
    j, base = 0, 0  # extent index, data bytes before it
    while pos < total and len(out) < samples:
        while base + (data[j][1] - data[j][0]) <= pos:
            base += data[j][1] - data[j][0]
            j += 1
        a, b = data[j]
        off = a + (pos - base)
        out.append((off, min(length, b - off)))
        pos += step
    return out


def _packed(fd: int, off: int, n: int) -> tuple[int, int]:
    """(bytes read, their zlib size capped at that) of one piece; its pages dropped from the cache after."""
    piece = os.pread(fd, n, off)
    os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
    return len(piece), min(len(zlib.compress(piece, 1)), len(piece))


def compressed_fraction(path: Path, samples: int = SAMPLES, length: int = SAMPLE_BYTES) -> float | None:
    """Compressed size / original size over samples of the file's data (0.0 .. ~1.0); None when it has no data."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pieces = _offsets(data_extents(fd, os.lseek(fd, 0, os.SEEK_END)), samples, length)
        with ThreadPoolExecutor(THREADS) as pool:
            got = list(pool.map(lambda p: _packed(fd, *p), pieces))
    finally:
        os.close(fd)
    raw = sum(r for r, _ in got)
    return sum(z for _, z in got) / raw if raw else None
