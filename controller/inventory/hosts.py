"""The hosts vmbackup manages, as libvirt URIs (the `hosts` table).

Usage::

    add_host(conn, "qemu+ssh://root@hv2/system", name="hv2")
    for h in list_hosts(conn, default_uri=settings.uri): ...   # the default URI when none was added
    remove_host(conn, "qemu+ssh://root@hv2/system")            # its VMs stay in the inventory
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from controller import db
from controller.inventory.exceptions import HostNotFound, InvalidHostUri
from controller.jobs.model import utcnow

# driver[+transport]://[user@][host][:port]/[path][?query], e.g. qemu:///system, qemu+ssh://root@hv/system
_URI = re.compile(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?://[^\s/]*/[^\s]*$")


@dataclass(frozen=True)
class Host:
    """One host: its libvirt URI, a display name, and whether it is the implicit default."""

    uri: str
    name: str
    added_at: str | None = None
    implicit: bool = False

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return dict(self.__dict__)


def validate_uri(uri: str) -> str:
    """Return uri if it looks like a libvirt URI, else raise InvalidHostUri."""
    if not _URI.match(uri):
        raise InvalidHostUri(f"{uri!r} is not a libvirt URI")
    return uri


def add_host(conn: sqlite3.Connection, uri: str, name: str | None = None) -> Host:
    """Add (or rename) a host; the name defaults to the URI's host part or 'local'."""
    validate_uri(uri)
    name = name or _default_name(uri)
    now = utcnow()
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO hosts (uri, name, added_at) VALUES (?, ?, ?) ON CONFLICT(uri) DO UPDATE SET name = ?",
            (uri, name, now, name),
        )
    row = conn.execute("SELECT * FROM hosts WHERE uri = ?", (uri,)).fetchone()
    return Host(row["uri"], row["name"], row["added_at"])


def remove_host(conn: sqlite3.Connection, uri: str) -> None:
    """Forget a host (its VMs and their recovery points stay); HostNotFound if it was never added."""
    with db.transaction(conn):
        if conn.execute("DELETE FROM hosts WHERE uri = ?", (uri,)).rowcount == 0:
            raise HostNotFound(f"no host {uri!r}")


def list_hosts(conn: sqlite3.Connection, default_uri: str) -> list[Host]:
    """The configured hosts, or the default URI as the one implicit host when none was added."""
    rows = conn.execute("SELECT * FROM hosts ORDER BY name, uri").fetchall()
    if not rows:
        return [Host(default_uri, _default_name(default_uri), None, implicit=True)]
    return [Host(r["uri"], r["name"], r["added_at"]) for r in rows]


def _default_name(uri: str) -> str:
    """'hv2' for qemu+ssh://root@hv2:22/system, 'local' for qemu:///system."""
    authority = uri.split("://", 1)[1].split("/", 1)[0]
    host = authority.rsplit("@", 1)[-1].split(":", 1)[0]
    return host or "local"
