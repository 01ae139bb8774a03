"""Where a file's data lies: ``SEEK_DATA``/``SEEK_HOLE`` ranges (a block device is data throughout)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) ranges covering [0, size), found with SEEK_DATA/SEEK_HOLE.

    Where SEEK_DATA is not supported (a block device: EINVAL) all of [0, size) is data; the copy still leaves zero
    pieces as holes in the destination.
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


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of [0, size) that hold data."""
    return [(a, b) for a, b, is_data in extents(fd, size) if is_data]


def chunk_map(fd: int, size: int, chunk: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, has_data) per `chunk`-sized piece of [0, size) (the last may be shorter), consecutive hole
    chunks merged into one range: a piece is a hole only when no byte of it is data."""
    data = data_extents(fd, size)
    j = 0
    hole_start = -1
    for pos in range(0, size, chunk):
        end = min(pos + chunk, size)
        while j < len(data) and data[j][1] <= pos:
            j += 1
        if j < len(data) and data[j][0] < end:
            if hole_start >= 0:
                yield hole_start, pos, False
                hole_start = -1
            yield pos, end, True
        elif hole_start < 0:
            hole_start = pos
    if hole_start >= 0:
        yield hole_start, size, False
