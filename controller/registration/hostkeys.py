"""Trust on first use for guest SSH host keys, bound to the VM's libvirt UUID.

The first registration of a VM records the host key its sshd presented; every later SSH session to that VM
(re-register, upgrade, unregister) must present the same key, checked right after the handshake and before
anything (the agent bundle, its private key) is sent. Binding the key to the VM's UUID rather than to host:port
keeps forwarded ports and DHCP addresses that get reused by other VMs from causing false alarms.

    store = HostKeyStore.of(settings)                         # $VMBACKUP_HOME/ssh/known_vms.json
    store.check(vm_uuid, vm_name, session.host_key())        # "learned" | "matched"; SSH_HOST_KEY_CHANGED if not
    store.check(vm_uuid, vm_name, key, accept_new=True)      # "replaced": the operator verified the new key
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko

from controller.locks import flocked
from controller.registration.exceptions import SshHostKeyChanged
from controller.settings import Settings
from controller.ssh.client import fingerprint as key_line_fingerprint

_thread_lock = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: SHA256:<base64, unpadded> (what `ssh-keygen -lf` prints)."""
    return key_line_fingerprint(f"{key.get_name()} {key.get_base64()}")


class HostKeyStore:
    """A small JSON file {vm_uuid: {name, key_type, key, fingerprint, first_seen}}, updated under a lock."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def of(cls, settings: Settings) -> HostKeyStore:
        """The store of a controller home."""
        return cls(settings.home / "ssh" / "known_vms.json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The current entries, locked against threads and other controller processes; written back on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _thread_lock, flocked(self.path.with_suffix(".lock")):
            entries: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, self.path)

    def get(self, vm_uuid: str) -> dict[str, Any] | None:
        """The recorded entry of a VM, if any."""
        with self._locked() as entries:
            return entries.get(vm_uuid)

    def check(self, vm_uuid: str, vm_name: str, key: paramiko.PKey, accept_new: bool = False) -> str:
        """Learn the key on first use, else require the recorded one; returns learned | matched | replaced."""
        presented = {
            "name": vm_name,
            "key_type": key.get_name(),
            "key": key.get_base64(),
            "fingerprint": fingerprint(key),
            "first_seen": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._locked() as entries:
            known = entries.get(vm_uuid)
            if known is None:
                entries[vm_uuid] = presented
                return "learned"
            if (known["key_type"], known["key"]) == (presented["key_type"], presented["key"]):
                return "matched"
            if accept_new:
                entries[vm_uuid] = presented
                return "replaced"
        raise SshHostKeyChanged(
            f"the SSH host key of VM {vm_name!r} changed: {presented['fingerprint']} ({presented['key_type']}) "
            f"is presented, {known['fingerprint']} ({known['key_type']}) was recorded on {known['first_seen']}",
            details={"vm_uuid": vm_uuid, "recorded": known["fingerprint"], "presented": presented["fingerprint"]},
        )
