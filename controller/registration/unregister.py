"""Unregister a VM: stop + disable the agent, remove its venv/config/unit, revoke its certificate, forget it.

r = Unregistrar(state)               # a State (borrowed), or Settings (opens one; close() or `with`)
r.unregister("web1")                 # a job with phases connect, remove, reset-chain, revoke
r.unregister("web1", force=True)     # guest unreachable: skip the guest removal, still revoke and forget

Either way the VM's incremental chain is reset (controller.backup.chainreset): vmbackup's checkpoints are deleted
and a later backup of the VM is a full.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.backup.chainreset import detail, reset_vm_chain
from controller.errors import VmBackupError
from controller.jobs.store import JobRun, JobStore, VmRef
from controller.pki import CertificateAuthority
from controller.registration import guest
from controller.registration.exceptions import RegistrationNotFound
from controller.registration.hostkeys import HostKeyStore
from controller.registration.ssh import SshEndpoint, connect
from controller.registration.store import Registration, delete, get_registration, list_registrations
from controller.settings import Settings
from controller.state import State, StateUser
from controller.virt.connection import connection, lookup
from controller.virt.exceptions import DomainNotFound

#: why an unregistered VM's next backup (should it be registered again) is a full
UNREGISTER_REASON = "VM unregistered"


@dataclass(frozen=True)
class UnregisterResult:
    """What an unregistration did."""

    job_id: str
    vm_uuid: str
    vm_name: str
    guest_cleaned: bool
    revoked_serial: str


class Unregistrar(StateUser):
    """Removes agents and registrations."""

    def __init__(self, source: Settings | State) -> None:
        state = self._use_state(source)
        self.settings = state.settings
        self.conn = state.db
        self.jobs = JobStore(self.conn)
        self.ca = CertificateAuthority.load_or_create(self.settings.pki_dir)

    def _find(self, vm: str, uri: str) -> VmRef:
        """The registered VM named by name or uuid (libvirt first, then the registrations table)."""
        try:
            with connection(uri) as lv:
                dom = lookup(lv, vm)
                uuid, name = dom.UUIDString(), dom.name()
        except DomainNotFound:
            match = [r for r in list_registrations(self.conn) if vm in (r.vm_uuid, r.vm_name)]
            if not match:
                raise RegistrationNotFound(f"VM {vm!r} is neither defined in libvirt nor registered") from None
            uuid, name = match[0].vm_uuid, match[0].vm_name
        if get_registration(self.conn, uuid) is None:
            raise RegistrationNotFound(f"VM {name!r} ({uuid}) is not registered")
        return VmRef(uuid=uuid, name=name, host_uri=uri)

    def _remove_agent(self, run: JobRun, ref: VmRef, reg: Registration, force: bool) -> bool:
        """Stop and remove the agent over SSH; False when the guest is unreachable and ``force`` is set."""
        endpoint = SshEndpoint(reg.ssh_host, reg.ssh_port, reg.ssh_user, reg.ssh_key)
        try:
            with run.phase("connect"):
                session = connect(endpoint)
                try:  # never run commands on a guest that presents another host key than the registered one
                    HostKeyStore.of(self.settings).check(ref.uuid, ref.name, session.host_key())
                    guest.check_privilege(session)
                except VmBackupError:
                    session.close()
                    raise
        except VmBackupError:
            if not force:
                raise
            return False
        with session, run.phase("remove"):
            guest.remove_agent(session)
        return True

    def unregister(self, vm: str, uri: str | None = None, force: bool = False) -> UnregisterResult:
        """Unregister one VM as a job; with ``force`` an unreachable guest does not stop it."""
        ref = self._find(vm, uri or self.settings.uri)
        reg = get_registration(self.conn, ref.uuid)
        assert reg is not None  # _find checked it
        job = self.jobs.create("unregister", vm=ref)
        cleaned = False
        with self.jobs.run(job.id) as run:
            if reg.ssh_host:  # registered without the vmbackup agent (qga, none): nothing to remove in the guest
                cleaned = self._remove_agent(run, ref, reg, force)
            with run.phase("reset-chain"):  # before the registration goes: a crash after it still leaves the mark
                deleted = reset_vm_chain(self.conn, ref.host_uri, ref.uuid, UNREGISTER_REASON)
                run.detail("chain_reset", detail(UNREGISTER_REASON, deleted))
            with run.phase("revoke"):
                if reg.cert_serial:
                    self.ca.revoke(int(reg.cert_serial, 16))
                delete(self.conn, ref.uuid)
        return UnregisterResult(job.id, ref.uuid, ref.name, cleaned, reg.cert_serial)
