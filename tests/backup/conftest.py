"""Fixtures of the backup tests: ``tiny``, a factory of OS-less domains on the session's libvirt."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from tests.backup.helpers import Tiny


@pytest.fixture
def tiny(settings: Any, lab_prefix: str) -> Iterator[Any]:
    """A factory of tiny domains under the session's home (reachable by QEMU), all undefined afterwards."""
    conn = libvirt.open(settings.uri)
    workdir = settings.home / f"tiny-{secrets.token_hex(3)}"
    workdir.mkdir(mode=0o755)
    made: list[Tiny] = []

    def make() -> Tiny:
        t = Tiny(conn, workdir, f"{lab_prefix}tiny-{secrets.token_hex(3)}")
        made.append(t)
        return t

    yield make
    for t in made:
        t.remove()
    conn.close()
