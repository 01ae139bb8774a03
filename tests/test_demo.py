"""`make demo`'s one-line summary of a point (host-only; the demo itself runs with `make demo`)."""

from __future__ import annotations

from controller.demo import point_line


def test_point_line_shows_type_changed_and_stored() -> None:
    """A full says it holds every allocated byte; an incremental names its changed bytes and its parent."""
    full = {"point_id": "p1", "type": "full", "changed_bytes": None, "stored_bytes": 600 * 2**20}
    incr = {"point_id": "p2", "type": "incremental", "parent": "p1", "changed_bytes": 17 * 2**20,
            "stored_bytes": 18 * 2**20}
    assert point_line(full) == "p1: full, every allocated byte, 600.0 MiB stored"
    assert point_line(incr) == "p2: incremental, 17.0 MiB changed since p1, 18.0 MiB stored"
