"""The byte mover: copies and checksums disk files at the disk's speed (no knowledge of the vault's catalogue).

``pipeline.copy`` walks a file in fixed chunks, skips holes (``SEEK_DATA``/``SEEK_HOLE``), reads the data with large
``O_DIRECT`` reads, hashes each chunk in a thread pool from the very buffer that was read while the previous chunks
are still being written at the same offsets, and fsyncs the destination once.
"""

from controller.datapath.extents import data_extents, extents
from controller.datapath.pipeline import Checksum, CopyResult, Progress, copy

__all__ = ["Checksum", "CopyResult", "Progress", "copy", "data_extents", "extents"]
