"""The overlay guard's scan of every domain definition survives a domain that vanishes while it runs (another tool
undefining one between the listing and the read). Before, the scan raised VM_NOT_FOUND and a backup's commit
failed because some unrelated domain was undefined at that moment."""

from __future__ import annotations

from typing import Any

import libvirt

from controller.backup.offline import referenced_files
from tests.domain_xml import domain, file_disk


class _ListsAStaleDomain:
    """A connection whose listing still includes a domain that has been undefined since."""

    def __init__(self, conn: libvirt.virConnect, stale: libvirt.virDomain):
        self.conn, self.stale = conn, stale

    def listAllDomains(self, flags: int = 0) -> list[Any]:
        return [*self.conn.listAllDomains(flags), self.stale]


def test_a_domain_undefined_during_the_scan_is_skipped() -> None:
    conn = libvirt.open("test:///default")
    keep = conn.defineXML(domain("keeper", file_disk("/var/tmp/keeper.qcow2", "vda")))
    gone = conn.defineXML(domain("vanishing", file_disk("/var/tmp/vanishing.qcow2", "vda")))
    gone.undefine()
    try:
        files = referenced_files(_ListsAStaleDomain(conn, gone))  # type: ignore[arg-type]
        assert "/var/tmp/keeper.qcow2" in files and "/var/tmp/vanishing.qcow2" not in files
    finally:
        keep.undefine()
        conn.close()
