"""The byte mover: copies and checksums disk files at the disk's speed (no knowledge of the vault's catalogue).

``pipeline.copy`` walks a file in fixed chunks, skips holes (``SEEK_DATA``/``SEEK_HOLE``), reads the data with large
``O_DIRECT`` reads, hashes each chunk in a thread pool from the very buffer that was read while the previous chunks
are still being written at the same offsets, and fsyncs the destination once.

Modules are imported by name (``from controller.datapath import pipeline``); the package itself imports nothing, so
a caller that needs one small piece (``sample``, ``extents``) does not load the copy engine's thread pools.
"""
