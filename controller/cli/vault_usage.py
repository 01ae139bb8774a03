"""The chains table of `vmbackup vault usage` (controller/vault/usage.py): per VM, each chain (a full and the
incrementals built on it) with its points, bytes, protected points and soft-deleted bytes. Used by vault_cmd.py."""

from __future__ import annotations

from typing import Any

from controller.cli import output
from controller.cli.points_cmd import human_size


def print_chains(u: dict[str, Any]) -> None:
    """One row per chain of every VM in a usage.breakdown() result."""
    rows = [
        [e["vm_name"] or uuid, c["full"], c["newest"], c["points"], human_size(c["bytes"]), c["protected"],
         f"{c['deleted_points']}, {human_size(c['deleted_bytes'])}"]
        for uuid, e in u["vms"].items()
        for c in e.get("chains", [])
    ]  # fmt: skip
    columns = ["VM", "chain (full)", "newest", "points", "size", "protected", "soft-deleted"]
    output.table("chains", columns, rows)
