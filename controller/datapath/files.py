"""The two ends of a copy: a source read through the kernel's readahead (a block device: large O_DIRECT reads),
a destination written sparse at the same offsets with O_DIRECT. What passes through the page cache (the source's
pages; the destination where O_DIRECT is refused: tmpfs, an unaligned tail) is dropped behind the copy.

Why a file source is not read with O_DIRECT: on the bench disk (virtio, read_ahead_kb 8192) four 4 MiB O_DIRECT
reads in flight read a filled 4 GiB qcow2 in 3.0 s, readahead in 128 KiB ``pread`` pieces in 1.4-1.8 s
(bench/results/copy-NOTE.md); the pages are dropped as soon as each chunk is read, so the cache is not polluted."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from controller.datapath.buffers import Buffer, nonzero_runs
from controller.datapath.exceptions import SourceShrank

READ_PIECE = 128 << 10  #: page-cache reads: one pread per piece, so readahead runs ahead of the reader
ALIGN = 4096  #: offsets and lengths of O_DIRECT requests are multiples of this (covers 512 and 4K sectors)
SUB = 64 << 10  #: zero detection granularity of the destination: all-zero pieces stay holes
WRITEBACK_LAG = 8  #: buffered writes: pages this many chunks behind the copy are dropped (clean by then)


def _open_direct(path: Path, flags: int) -> int:
    """path opened with O_DIRECT, or -1 where the filesystem refuses it."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


def _aligned(offset: int, length: int) -> bool:
    """Whether an O_DIRECT request may cover [offset, offset + length) (buffers are page-aligned)."""
    return offset % ALIGN == 0 and length % ALIGN == 0


class Source:
    """A file or block device being read: size by seeking to the end (st_size is 0 for a block device)."""

    def __init__(self, path: Path, direct: bool):
        """Open path (and, for a block device when asked, an O_DIRECT descriptor where allowed)."""
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.dfd = -1
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # doubles the readahead window
            block = stat.S_ISBLK(os.fstat(self.fd).st_mode)
            self.dfd = _open_direct(path, os.O_RDONLY) if direct and block else -1
            if self.dfd >= 0 and self.size >= ALIGN:
                self._probe()
        except BaseException:
            self.close()
            raise

    def _probe(self) -> None:
        """Drop O_DIRECT when the filesystem took it at open but refuses aligned reads (before any worker reads)."""
        buf = Buffer(ALIGN)
        try:
            os.preadv(self.dfd, [buf.view], 0)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            os.close(self.dfd)
            self.dfd = -1

    @property
    def direct(self) -> bool:
        """Whether reads bypass the page cache."""
        return self.dfd >= 0

    def read(self, buf: Buffer, offset: int, n: int) -> None:
        """Fill buf[:n] from offset; SOURCE_SHRANK when the file ends before."""
        direct = self.dfd >= 0 and _aligned(offset, n)
        piece = n if direct else READ_PIECE
        done = 0
        while done < n:  # runs in several worker threads at once
            got = os.preadv(self.dfd if direct else self.fd, [buf.view[done : min(n, done + piece)]], offset + done)
            if got == 0:
                raise SourceShrank(
                    f"{self.path} ended at offset {offset + done} while being read (it was {self.size} bytes)",
                    details={"file": str(self.path), "offset": offset + done, "size": self.size},
                )
            done += got
        if not direct:
            os.posix_fadvise(self.fd, offset, n, os.POSIX_FADV_DONTNEED)  # read once: do not keep it cached

    def close(self) -> None:
        """Drop what readahead brought in beyond the chunks read (reads through the page cache), close both."""
        if self.fd >= 0 and self.dfd < 0:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for fd in (self.fd, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dfd = -1


class Dest:
    """A destination file created (or truncated) at the source's size: data pwritten at the same offsets, all-zero
    pieces left as holes; fsynced once by finish()."""

    def __init__(self, path: Path, size: int, direct: bool):
        """Create path with `size` bytes of holes (and an O_DIRECT descriptor when asked and allowed)."""
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        self.dfd = -1
        try:
            os.ftruncate(self.fd, size)
            self.dfd = _open_direct(path, os.O_WRONLY) if direct else -1
            self.use_direct = self.dfd >= 0
        except BaseException:
            self.close()
            path.unlink(missing_ok=True)  # created above: a copy that could not start leaves nothing either
            raise

    def write(self, buf: Buffer, offset: int, n: int, chunk: int) -> None:
        """Write buf[:n] at offset, skipping all-zero SUB pieces (runs in the writer thread)."""
        for a, b in nonzero_runs(buf, n, SUB):
            self._pwrite_all(buf, a, b, offset)
        if not self.use_direct:  # buffered: start writeback now, drop what was written WRITEBACK_LAG chunks ago
            os.posix_fadvise(self.fd, offset, n, os.POSIX_FADV_DONTNEED)
            behind = offset - WRITEBACK_LAG * chunk
            if behind >= 0:
                os.posix_fadvise(self.fd, behind, chunk, os.POSIX_FADV_DONTNEED)

    def _pwrite_all(self, buf: Buffer, a: int, b: int, offset: int) -> None:
        """pwrite buf[a:b] at offset + a until every byte is written (O_DIRECT when aligned; several writer
        threads at once)."""
        while a < b:
            direct = self.use_direct and _aligned(offset + a, b - a)
            try:
                a += os.pwrite(self.dfd if direct else self.fd, buf.view[a:b], offset + a)
            except OSError as e:
                if not direct or e.errno != errno.EINVAL:
                    raise
                self.use_direct = False  # refused after all: page cache from now on (dfd stays open until close)

    def finish(self) -> int:
        """fsync (the one flush of the copy), drop the file's cached pages; the bytes it occupies."""
        os.fsync(self.fd)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        """Close both descriptors."""
        for fd in (self.fd, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dfd = -1
