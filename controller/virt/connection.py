"""Opening libvirt connections and translating libvirt errors into the product's typed errors."""

from __future__ import annotations

import functools
import secrets
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import libvirt

from controller.errors import VmBackupError
from controller.virt.exceptions import DomainBusy, DomainNotFound, HypervisorError, HypervisorUnreachable

# Silence libvirt's default handler, which prints every error to stderr even when we handle it.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def translate(err: libvirt.libvirtError, context: str = "") -> VmBackupError:
    """Map a libvirtError to our error type, keeping libvirt's message in the details."""
    msg = err.get_error_message() or str(err)
    code = err.get_error_code()
    details = {"libvirt_code": code, "libvirt_message": msg}
    prefix = f"{context}: " if context else ""
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"{prefix}{msg}", details=details)
    if "cannot acquire state change lock" in msg or code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return DomainBusy(f"{prefix}the VM is busy with another operation ({msg})", details=details)
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_SYSTEM_ERROR) and "connect" in msg.lower():
        return HypervisorUnreachable(f"{prefix}{msg}", details=details)
    return HypervisorError(f"{prefix}{msg}", details=details)


def open_connection(uri: str) -> libvirt.virConnect:
    """Open a read-write libvirt connection or raise HypervisorUnreachable."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HypervisorUnreachable(
            f"cannot connect to libvirt at {uri}: {e.get_error_message()}",
            details={"uri": uri, "libvirt_message": e.get_error_message()},
        ) from e
    if conn is None:  # pragma: no cover - old bindings returned None
        raise HypervisorUnreachable(f"cannot connect to libvirt at {uri}")
    return conn


@contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    """``with connection(uri) as conn:`` opens and always closes a libvirt connection."""
    conn = open_connection(uri)
    try:
        yield conn
    finally:
        with suppress(libvirt.libvirtError):
            conn.close()


def lookup(conn: libvirt.virConnect, name_or_uuid: str) -> libvirt.virDomain:
    """Find a domain by name or UUID string, or raise DomainNotFound."""
    try:
        if len(name_or_uuid) == 36 and name_or_uuid.count("-") == 4:
            return conn.lookupByUUIDString(name_or_uuid)
        return conn.lookupByName(name_or_uuid)
    except libvirt.libvirtError as e:
        raise translate(e, f"VM {name_or_uuid!r}") from e


LOCAL_URI = "qemu:///system"
_DMI_UUID = Path("/sys/class/dmi/id/product_uuid")


def host_uuid(conn: libvirt.virConnect) -> str:
    """The host UUID a libvirt connection's capabilities report (``/capabilities/host/uuid``), lower case."""
    try:
        node = ET.fromstring(conn.getCapabilities()).find("./host/uuid")
    except libvirt.libvirtError as e:
        raise translate(e, "reading the host capabilities") from e
    return (node.text or "").strip().lower() if node is not None else ""


@functools.cache
def local_host_uuid() -> str:
    """This machine's libvirt host UUID ("" when it cannot be found).

    Asked from the local libvirtd itself (a read-only ``qemu:///system`` connection): libvirt picks the UUID from
    ``host_uuid`` in libvirtd.conf, else SMBIOS, so asking it compares like with like even where the SMBIOS UUID is
    missing or libvirtd.conf overrides it. Without a local libvirtd, the SMBIOS UUID
    (/sys/class/dmi/id/product_uuid), which libvirt would have used. /etc/machine-id is never used: libvirt does not
    report it, so it could not match.
    """
    with suppress(libvirt.libvirtError):
        conn = libvirt.openReadOnly(LOCAL_URI)
        if conn is not None:
            try:
                return host_uuid(conn)
            finally:
                with suppress(libvirt.libvirtError):
                    conn.close()
    with suppress(OSError):
        return _DMI_UUID.read_text().strip().lower()
    return ""


def is_this_host(conn: libvirt.virConnect, probe_parent: Path | None = None) -> bool:
    """True when the libvirt host behind `conn` sees our filesystem (its disk paths are paths we can read).

    The host UUIDs are compared first. They differ also for a second libvirtd on this very machine (e.g. one in a
    network namespace) on hosts without an SMBIOS UUID, where each libvirtd start makes up a temporary one; so when
    they differ and probe_parent is given, :func:`sees_our_files` asks the daemon itself.
    """
    remote = host_uuid(conn)
    if remote and remote == local_host_uuid():
        return True
    return probe_parent is not None and sees_our_files(conn, probe_parent)


def sees_our_files(conn: libvirt.virConnect, probe_parent: Path) -> bool:
    """Does the libvirt daemon behind `conn` see the files we see? Proven with a nonce, not guessed.

    A fresh directory holding one randomly named empty file is made under probe_parent; the daemon is asked to
    start a transient ``dir`` storage pool on that path and to list its volumes. Only a daemon that reads our
    filesystem (same machine, same mount namespace view) can start it and name the file; the pool is destroyed
    (transient: gone) and the directory removed whatever happens.
    """
    nonce = f"vmbackup-probe-{secrets.token_hex(8)}"
    probe_parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=".vmb-probe-", dir=probe_parent))
    try:
        (d / nonce).touch()
        xml = f"<pool type='dir'><name>{nonce}</name><target><path>{d}</path></target></pool>"
        try:
            pool = conn.storagePoolCreateXML(xml, 0)
        except libvirt.libvirtError:
            return False  # the directory does not exist where the daemon looks: another machine
        try:
            return nonce in pool.listVolumes()
        finally:
            with suppress(libvirt.libvirtError):
                pool.destroy()
    finally:
        shutil.rmtree(d, ignore_errors=True)
