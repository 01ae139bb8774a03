"""Whether a disk is stored compressed: the compression a backup asks for ("zstd" | "none"), where it pays.

A full copy samples the source first (``controller.datapath.sample``): when its data would shrink to no less than
PAYS_BELOW of its size, compressing is not worth its cost (qemu-img compressing every cluster of incompressible
data, then a second read to checksum the stored file, takes ~2x the plain copy that checksums as it copies) and the
disk is stored uncompressed. An incremental follows its parent's copy of the disk: the chain's full decided for it
(compressed parent, compressed incremental), so an incompressible disk never pays the compression cost per change.
docs/design.md "Compression" has the measurements.
"""

from __future__ import annotations

from pathlib import Path

from controller.vault.manifest import COMPRESSIONS, DiskRecord

#: compress a full copy only when the sampled data shrinks below this fraction of its size
PAYS_BELOW = 0.8
#: what a backup without a policy (or a policy without the field) asks for
DEFAULT = "zstd"


def check(compression: str) -> str:
    """The compression name, or ValueError naming the allowed ones."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    return compression


def for_full_copy(requested: str, src: Path) -> str:
    """ "zstd" when asked for and the sampled source data shrinks below PAYS_BELOW (or it has no data: nothing
    to pay for, and the chain's incrementals follow), else "none"."""
    if check(requested) == "none":
        return "none"
    from controller.datapath.sample import compressed_fraction  # the byte mover: loaded by the writers only

    fraction = compressed_fraction(src)
    return "zstd" if fraction is None or fraction < PAYS_BELOW else "none"


def for_incremental(requested: str, parent: DiskRecord | None) -> str:
    """ "zstd" when asked for and the parent's copy of the disk is compressed (the chain's full decided), else
    "none" (no parent copy: the writer refuses the incremental anyway)."""
    wanted = check(requested) == "zstd"
    return "zstd" if wanted and parent is not None and parent.compression == "zstd" else "none"
