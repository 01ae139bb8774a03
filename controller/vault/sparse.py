"""Sparse-aware copy of a stored disk with a checksum of its full logical content, computed on the fly.

The bytes move through controller.datapath's pipeline: large O_DIRECT reads of the data extents only, each 4 MiB
chunk hashed in a worker thread from the very buffer that was read (see ``digest``) while earlier chunks are
written at the same offsets, all-zero pieces left as holes like ``cp --sparse=always``, one fsync at the end. A chunk
that lies wholly in holes is never read: its digest is known and it stays a hole in the destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.datapath import pipeline
from controller.datapath.extents import data_extents, extents
from controller.datapath.pipeline import Progress
from controller.vault import digest
from controller.vault.exceptions import ChecksumMismatch

BLOCK = digest.CHUNK
assert pipeline.CHUNK == BLOCK, "the copy's chunks are the checksum's chunks"

__all__ = ["BLOCK", "Progress", "StreamResult", "copy_verified", "data_extents", "extents", "stream"]


@dataclass
class StreamResult:
    """What one pass over a file produced."""

    digest: str  # "<algo>:<hex>"
    logical_size: int
    data_bytes: int  # bytes actually read (non-hole)
    stored_bytes: int  # bytes allocated by the destination (0 when only hashing)


def stream(
    src: Path, dst: Path | None = None, progress: Progress | None = None, algo: str = digest.DEFAULT_ALGO
) -> StreamResult:
    """Checksum src (and copy it sparse to dst when given, fsynced); dst is created or truncated.

    progress(done, total) may raise to cancel; a failed or cancelled copy removes dst before the error propagates.
    """
    h = digest.new(algo)
    res = pipeline.copy(Path(src), Path(dst) if dst is not None else None, h, progress)
    return StreamResult(
        digest=h.hexdigest(), logical_size=res.logical_size, data_bytes=res.data_bytes, stored_bytes=res.stored_bytes
    )


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
