"""Checksums of stored disks, written as ``"<algo>:<hex>"``.

``sha256-4m`` (the default): the file's logical content is cut into 4 MiB chunks (the last may be shorter); the
checksum is the SHA-256 of the concatenated SHA-256 digests of the chunks. A chunk that is all zeros has a known
digest, so holes are never read nor hashed byte by byte: a 1 TiB thin disk costs its data, not its size. The value
depends only on the bytes, not on where the filesystem keeps holes, so any copy can be checked. By hand::

    split -b 4M --filter='sha256sum | cut -c1-64 | tr a-f A-F | basenc --base16 -d' FILE | sha256sum

``sha256``: the plain SHA-256 of the whole file (``sha256sum FILE``), kept to verify points of manifest format 1.

    >>> d = new("sha256-4m"); d.zeros(5 << 20); d.hexdigest() == of_bytes(bytes(5 << 20))
    True
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from controller.vault.exceptions import ManifestInvalid

CHUNK = 4 << 20
DEFAULT_ALGO = "sha256-4m"
ALGOS = ("sha256-4m", "sha256")
ZEROS = memoryview(bytes(CHUNK))  #: one chunk of zeros, shared with sparse.py


@lru_cache(maxsize=8)
def _zero_chunk_digest(n: int) -> bytes:
    """SHA-256 of n zero bytes (n <= CHUNK): the digest of a hole chunk."""
    return hashlib.sha256(ZEROS[:n]).digest()


class Digest:
    """A running checksum fed chunk by chunk: ``data(chunk)`` for bytes read, ``zeros(n)`` for holes."""

    def __init__(self, algo: str):
        if algo not in ALGOS:
            raise ManifestInvalid(f"unknown checksum algorithm {algo!r} (known: {', '.join(ALGOS)})")
        self.algo = algo
        self._h = hashlib.sha256()

    @property
    def parallel(self) -> bool:
        """Whether chunks can be hashed apart (leaf, in any thread) and fed in order (add_leaf): sha256-4m."""
        return self.algo == "sha256-4m"

    @staticmethod
    def leaf(chunk: memoryview | bytes) -> bytes:
        """sha256-4m: one chunk's own SHA-256 (thread-safe; hashlib releases the GIL on large buffers)."""
        return hashlib.sha256(chunk).digest()

    def add_leaf(self, leaf: bytes) -> None:
        """sha256-4m: feed a chunk's leaf(), in file order (data(chunk) == add_leaf(leaf(chunk)))."""
        self._h.update(leaf)

    def data(self, chunk: memoryview | bytes) -> None:
        """Feed one chunk (exactly CHUNK bytes, except at the end of the file)."""
        if self.parallel:
            self.add_leaf(self.leaf(chunk))
        else:
            self._h.update(chunk)

    def zeros(self, n: int) -> None:
        """Feed n zero bytes (a hole), chunk-aligned at its start."""
        while n:
            k = min(n, CHUNK)
            self._h.update(_zero_chunk_digest(k) if self.algo == "sha256-4m" else ZEROS[:k])
            n -= k

    def hexdigest(self) -> str:
        """The result as "<algo>:<hex>"."""
        return f"{self.algo}:{self._h.hexdigest()}"


def new(algo: str = DEFAULT_ALGO) -> Digest:
    """A fresh running checksum."""
    return Digest(algo)


def algo_of(value: str) -> str:
    """The algorithm named by a stored "<algo>:<hex>" value."""
    algo, sep, hexpart = value.partition(":")
    if not sep or algo not in ALGOS or len(hexpart) != 64:
        raise ManifestInvalid(f"bad checksum {value[:80]!r}: expected '<algo>:<64 hex>' with algo in {ALGOS}")
    return algo


def of_bytes(blob: bytes, algo: str = DEFAULT_ALGO) -> str:
    """The checksum of an in-memory blob (reference implementation: reads every byte)."""
    d = new(algo)
    for i in range(0, len(blob), CHUNK):
        d.data(blob[i : i + CHUNK])
    return d.hexdigest()
