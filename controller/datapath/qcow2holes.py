"""Give back the zero pages of a qcow2's metadata clusters to the filesystem (the file's bytes stay the same).

QEMU allocates qcow2 metadata a whole cluster at a time (64 KiB by default) and writes it in full: an incremental
point holding 160 MiB of changes spread over a 16 GiB disk touches every one of its 32 L2 tables, each one cluster,
each almost all zeros (one 8-byte entry per changed cluster). That is ~2.4 MiB of zeros per point (measured: a
1.5 % overhead over the changed bytes). Punching the all-zero filesystem blocks of the metadata clusters out
(``fallocate(PUNCH_HOLE | KEEP_SIZE)``) keeps every byte the file reads as (a hole reads as zeros), so the
image, its digest (controller/vault/digest.py hashes bytes, not allocation) and QEMU's view of it are unchanged;
only the space it occupies shrinks. Only metadata is scanned (header, L1 table, refcount table and blocks, L2
tables: a few MiB at most), never the data clusters, so the cost does not grow with the changed bytes.

Usage::

    freed = punch_zero_metadata(Path("disks/vda.qcow2"))   # bytes no longer allocated

The image must not be open for writing by anyone else (the writer calls it on a point it has just written).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from controller.datapath.exceptions import NotQcow2

_MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQIIQIIQQII")  # magic .. nb_snapshots (the version 2 header, 64 bytes + snapshots offset)
_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of an L1 / refcount table entry: the cluster's offset
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_fallocate.restype = ctypes.c_int


def _read(fd: int, offset: int, length: int) -> bytes:
    """Exactly length bytes at offset (a short read means a truncated image)."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise NotQcow2(f"qcow2 image is truncated: {length} B wanted at offset {offset}, {len(data)} B read")
    return data


def _table(fd: int, offset: int, entries: int) -> list[int]:
    """The cluster offsets a big-endian 64-bit table (L1 or refcount table) points at, zeros left out."""
    raw = _read(fd, offset, entries * 8)
    return [e & _OFFSET_MASK for e in struct.unpack(f">{entries}Q", raw) if e & _OFFSET_MASK]


def metadata_clusters(fd: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every metadata area of the qcow2 open at fd: header cluster, L1 table, refcount table,
    refcount blocks, L2 tables. Internal snapshots and persistent bitmaps are not walked (vault images written by
    vmbackup have neither; their clusters are left as they are)."""
    magic, version, _bfo, _bfs, cluster_bits, _size, _crypt, l1_size, l1_off, rt_off, rt_clusters, _nsnap = (
        _HEADER.unpack(_read(fd, 0, _HEADER.size))
    )
    if magic != _MAGIC or version not in (2, 3) or not 9 <= cluster_bits <= 21:
        raise NotQcow2(f"not a qcow2 image (magic {magic!r}, version {version}, cluster_bits {cluster_bits})")
    cluster = 1 << cluster_bits
    yield 0, cluster
    yield l1_off, -(-l1_size * 8 // cluster) * cluster
    yield rt_off, rt_clusters * cluster
    for block in _table(fd, rt_off, rt_clusters * cluster // 8):
        yield block, cluster
    for l2 in _table(fd, l1_off, l1_size):
        yield l2, cluster


def _punch(fd: int, offset: int, length: int) -> None:
    """Deallocate [offset, offset + length) keeping the file size (reads as zeros afterwards)."""
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE) at {offset}: {os.strerror(err)}")


def punch_zero_metadata(path: Path) -> int:
    """Punch out every all-zero filesystem block inside the metadata clusters of the qcow2 at path; fsync.

    Returns the bytes freed (allocation before minus after). A filesystem without hole punching (EOPNOTSUPP)
    frees nothing and is not an error. NOT_QCOW2 (file untouched) when the header is not a qcow2's.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        before = os.fstat(fd).st_blocks
        block = os.fstat(fd).st_blksize or 4096
        zero = bytes(block)
        size = os.fstat(fd).st_size
        for offset, length in list(metadata_clusters(fd)):
            end = min(offset + length, size)
            start = offset - offset % block
            while start < end:
                n = min(block, size - start)
                if os.pread(fd, n, start) == zero[:n]:
                    try:
                        _punch(fd, start, n)
                    except OSError as e:
                        if e.errno == errno.EOPNOTSUPP:  # this filesystem keeps its zeros
                            return 0
                        raise
                start += block
        os.fsync(fd)
        return max(0, (before - os.fstat(fd).st_blocks) * 512)
    finally:
        os.close(fd)
