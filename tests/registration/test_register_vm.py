"""Registration against real libvirt domains and a real lab VM over SSH, verified over mTLS.

Pre-check errors are produced for real: a defined-but-never-started domain (VM_NOT_RUNNING), one with six
data disks (TOO_MANY_DATA_DISKS, checked before the state), a wrong SSH key, a closed SSH port, python3
hidden in the guest, a 1-second install deadline, and the VM lock held by another job. Then the real
install, an upgrade that keeps a planted config marker, a revoked certificate refused, and unregister.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import paramiko
import pytest

from controller import db, settings
from controller.agentclient import AgentClient, AgentRefused, AgentUnreachable, ClientTLS
from controller.errors import VmBackupError
from controller.jobs.store import JobStore, VmRef
from controller.pki import CertificateAuthority
from controller.registration import guest
from controller.registration.hostkeys import HostKeyStore, fingerprint
from controller.registration.precheck import EndpointOverrides, resolve_endpoints
from controller.registration.register import RegisterOptions, RegisterResult, Registrar
from controller.registration.ssh import SshSession, connect
from controller.registration.store import get_registration
from controller.registration.unregister import Unregistrar
from tests.fixtures_registration import lab_vm_name


def _domain_xml(name: str, n_disks: int, tmp: Path) -> str:
    """A lab-style qemu (TCG) domain with ``n_disks`` qcow2 disks; defined only, never started."""
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{tmp}/{name}-{i}.qcow2'/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>"
        for i in range(n_disks)
    )
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>256</memory>"
        f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>{disks}</devices></domain>"
    )


@pytest.fixture
def defined_domain(tmp_path: Path) -> Iterator[Any]:
    """Factory: define a never-started domain with N disks; undefined afterwards."""
    conn = libvirt.open(settings.load().uri)
    made: list[libvirt.virDomain] = []

    def make(n_disks: int) -> str:
        name = f"vmbreg-test-{uuid.uuid4().hex[:8]}"
        made.append(conn.defineXML(_domain_xml(name, n_disks, tmp_path)))
        return name

    yield make
    for dom in made:
        dom.undefine()
    conn.close()


def _code(exc: pytest.ExceptionInfo[VmBackupError]) -> str:
    """The stable code of a raised typed error."""
    return exc.value.code


@pytest.mark.root
@pytest.mark.libvirt
def test_six_data_disks_reported_before_state(defined_domain: Any) -> None:
    name = defined_domain(7)  # OS disk + 6 data disks, shut off
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(name, RegisterOptions())
    assert _code(exc) == "TOO_MANY_DATA_DISKS"
    assert exc.value.details == {"data_disks": 6, "limit": 5}
    # raising the limit moves on to the next check: the VM is not running
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(name, RegisterOptions(max_data_disks=6))
    assert _code(exc) == "VM_NOT_RUNNING"


@pytest.mark.root
@pytest.mark.libvirt
def test_shut_off_vm_is_refused(defined_domain: Any) -> None:
    name = defined_domain(2)
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(name, RegisterOptions())
    assert _code(exc) == "VM_NOT_RUNNING"
    assert "shutoff" in exc.value.message


@pytest.mark.root
@pytest.mark.libvirt
def test_no_endpoint_anywhere_is_a_clear_error(defined_domain: Any) -> None:
    """No flag, no lab metadata and no lease or ARP entry in libvirt: SSH_ENDPOINT_UNKNOWN names all three."""
    name = defined_domain(1)
    with libvirt.open(settings.load().uri) as conn, pytest.raises(VmBackupError) as exc:
        resolve_endpoints(conn.lookupByName(name), EndpointOverrides())
    assert _code(exc) == "SSH_ENDPOINT_UNKNOWN"
    assert "--ssh-host" in exc.value.message and "DHCP lease" in exc.value.message


# ---- against the shared lab VM ---------------------------------------------------------------------------


def _ssh(vm: str) -> SshSession:
    """SSH into the lab VM with the endpoint from its lab metadata."""
    with libvirt.open(settings.load().uri) as conn:
        ends = resolve_endpoints(conn.lookupByName(vm), EndpointOverrides())
    return connect(ends.ssh)


def _agent_endpoint(vm: str) -> tuple[str, int, str]:
    """(host, port, uuid) of the lab VM's agent."""
    with libvirt.open(settings.load().uri) as conn:
        dom = conn.lookupByName(vm)
        ends = resolve_endpoints(dom, EndpointOverrides())
        return ends.agent_host, ends.agent_port, dom.UUIDString()


@pytest.mark.vm
def test_wrong_ssh_key_and_closed_port(lab_vm: Any, tmp_path: Path) -> None:
    vm = lab_vm_name(lab_vm)
    key = tmp_path / "wrong_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    opts = RegisterOptions(endpoints=EndpointOverrides(ssh_key=str(key)))
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(vm, opts)
    assert _code(exc) == "SSH_AUTH_FAILED"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    opts = RegisterOptions(endpoints=EndpointOverrides(ssh_host="127.0.0.1", ssh_port=closed))
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(vm, opts)
    assert _code(exc) == "SSH_UNREACHABLE"


@pytest.mark.vm
def test_guest_without_python3(lab_vm: Any) -> None:
    vm = lab_vm_name(lab_vm)
    with _ssh(vm) as s:
        real = s.check("readlink -f $(command -v python3)").out.strip()
        s.check("mv /usr/bin/python3 /usr/bin/python3.vmbreg-hidden")
        try:
            with pytest.raises(VmBackupError) as exc:
                Registrar(settings.load()).register(vm, RegisterOptions())
        finally:
            s.check("mv /usr/bin/python3.vmbreg-hidden /usr/bin/python3")
        assert s.check("command -v python3 && readlink -f $(command -v python3)").out.split()[-1] == real
    assert _code(exc) == "GUEST_PYTHON_MISSING"


@pytest.mark.vm
def test_install_deadline(lab_vm: Any) -> None:
    vm = lab_vm_name(lab_vm)
    with pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(vm, RegisterOptions(install_timeout_s=1))
    assert _code(exc) == "AGENT_INSTALL_TIMEOUT"
    with _ssh(vm) as s:  # the guest enforced the deadline too: no pip left running
        assert s.run("pgrep -f 'pip install'").rc == 1


@pytest.mark.vm
def test_concurrent_operation_is_refused(lab_vm: Any) -> None:
    vm = lab_vm_name(lab_vm)
    vm_uuid = _agent_endpoint(vm)[2]
    store = JobStore(db.connect(settings.load().db_path))
    job = store.create("backup", vm=VmRef(uuid=vm_uuid, name=vm, host_uri=settings.load().uri))
    with store.run(job.id), pytest.raises(VmBackupError) as exc:
        Registrar(settings.load()).register(vm, RegisterOptions())
    assert _code(exc) == "OPERATION_IN_PROGRESS"


@pytest.mark.vm
def test_registered_agent_answers_over_mtls(registered_vm: RegisterResult, lab_vm: Any) -> None:
    vm = lab_vm_name(lab_vm)
    with _ssh(vm) as s:
        hostname = s.check("hostname").out.strip()
        kernel = s.check("uname -r").out.strip()
        assert s.check(f"stat -c %a {guest.TLS_DIR}/agent.key").out.strip() == "600"
        assert s.check(f"systemctl is-enabled {guest.UNIT}").out.strip() == "enabled"
        assert s.run(f"ls {guest.STAGING_PREFIX}* 2>/dev/null").out == ""  # nothing left on /var/tmp
    info = registered_vm.info
    assert (info.hostname, info.kernel) == (hostname, kernel)
    reg = get_registration(db.connect(settings.load().db_path), registered_vm.registration.vm_uuid)
    assert reg is not None and reg.vm_name == vm and reg.agent_version == info.agent_version
    host, port, vm_uuid = _agent_endpoint(vm)
    ca = CertificateAuthority.load_or_create(settings.load().pki_dir)
    with AgentClient(host, port, vm_uuid=vm_uuid, tls=ClientTLS.from_pki(ca)) as client:
        assert client.get_info().hostname == hostname
        assert f"{client.verify_server_cert():x}" == reg.cert_serial
    print(f"\nregister timings under TCG: {registered_vm.timings}")


@pytest.mark.vm
def test_changed_host_key_is_refused_before_anything_runs(
    registered_vm: RegisterResult, lab_vm: Any, tmp_path: Path
) -> None:
    """Registration recorded the guest's host key; a different recorded key stops register and unregister."""
    vm, cfg = lab_vm_name(lab_vm), settings.load()
    store = HostKeyStore.of(cfg)
    vm_uuid = registered_vm.registration.vm_uuid
    real = store.get(vm_uuid)
    assert real is not None, "registration did not record the guest's host key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "k"))
    saved = store.path.read_text()
    entries = json.loads(saved)
    forged = {"key_type": other.get_name(), "key": other.get_base64(), "fingerprint": fingerprint(other)}
    entries[vm_uuid] = {**real, **forged}
    store.path.write_text(json.dumps(entries))
    try:
        with pytest.raises(VmBackupError) as exc:
            Registrar(cfg).register(vm, RegisterOptions())
        assert _code(exc) == "SSH_HOST_KEY_CHANGED"
        assert real["fingerprint"] in exc.value.message and fingerprint(other) in exc.value.message
        with pytest.raises(VmBackupError) as exc:
            Unregistrar(cfg).unregister(vm)
        assert _code(exc) == "SSH_HOST_KEY_CHANGED"
        assert get_registration(db.connect(cfg.db_path), vm_uuid) is not None  # nothing was removed
    finally:
        store.path.write_text(saved)


@pytest.mark.vm
def test_reregister_upgrades_keeps_config_and_revokes_old_cert(
    registered_vm: RegisterResult, lab_vm: Any
) -> None:
    vm = lab_vm_name(lab_vm)
    cfg = settings.load()
    conn = db.connect(cfg.db_path)
    before = get_registration(conn, registered_vm.registration.vm_uuid)
    assert before is not None
    marker = f"# planted-marker {uuid.uuid4().hex}"
    with _ssh(vm) as s:
        s.check(f"echo '{marker}' >> {guest.CONFIG}")
        old_crt, old_key = s.read(f"{guest.TLS_DIR}/agent.crt"), s.read(f"{guest.TLS_DIR}/agent.key")
    res = Registrar(cfg).register(vm, RegisterOptions())
    assert res.upgraded and not res.config_written
    with _ssh(vm) as s:
        assert marker in s.read(guest.CONFIG).decode()
    after = get_registration(conn, before.vm_uuid)
    assert after is not None and after.cert_serial != before.cert_serial
    ca = CertificateAuthority.load_or_create(cfg.pki_dir)
    assert ca.is_revoked(int(before.cert_serial, 16)) and not ca.is_revoked(int(after.cert_serial, 16))
    # put the revoked certificate back into the running agent: the controller must refuse it
    host, port, vm_uuid = _agent_endpoint(vm)
    with _ssh(vm) as s:
        new_crt, new_key = s.read(f"{guest.TLS_DIR}/agent.crt"), s.read(f"{guest.TLS_DIR}/agent.key")
        s.write(f"{guest.TLS_DIR}/agent.crt", old_crt)
        s.write(f"{guest.TLS_DIR}/agent.key", old_key, mode=0o600)
        s.check(f"systemctl restart {guest.UNIT}")
        try:
            _expect_refused(host, port, vm_uuid, ca)
        finally:
            s.write(f"{guest.TLS_DIR}/agent.crt", new_crt)
            s.write(f"{guest.TLS_DIR}/agent.key", new_key, mode=0o600)
            s.check(f"systemctl restart {guest.UNIT}")


def _expect_refused(host: str, port: int, vm_uuid: str, ca: CertificateAuthority) -> None:
    """Wait for the restarted agent and assert the controller refuses its (revoked) certificate."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with AgentClient(host, port, vm_uuid=vm_uuid, tls=ClientTLS.from_pki(ca)) as client:
                client.get_info()
            raise AssertionError("the agent's revoked certificate was accepted")
        except AgentUnreachable:
            assert time.monotonic() < deadline, "agent did not come back after restart"
            time.sleep(2)
        except AgentRefused as exc:
            assert "revoked" in exc.message
            return


@pytest.mark.vm
def test_unregister_removes_agent_then_register_again(registered_vm: RegisterResult, lab_vm: Any) -> None:
    vm = lab_vm_name(lab_vm)
    cfg = settings.load()
    conn = db.connect(cfg.db_path)
    reg = get_registration(conn, registered_vm.registration.vm_uuid)
    assert reg is not None
    res = Unregistrar(cfg).unregister(vm)
    assert res.guest_cleaned and res.revoked_serial == reg.cert_serial
    assert get_registration(conn, reg.vm_uuid) is None
    ca = CertificateAuthority.load_or_create(cfg.pki_dir)
    assert ca.is_revoked(int(reg.cert_serial, 16))
    with _ssh(vm) as s:
        for path in (guest.AGENT_ROOT, guest.CONF_DIR, guest.UNIT_PATH):
            assert not s.exists(path), path
        assert s.run(f"systemctl is-active {guest.UNIT}").out.strip() in ("inactive", "unknown")
    host, port, vm_uuid = _agent_endpoint(vm)
    with (
        pytest.raises(AgentUnreachable),
        AgentClient(host, port, vm_uuid=vm_uuid, tls=ClientTLS.from_pki(ca)) as client,
    ):
        client.get_info()
    with pytest.raises(VmBackupError) as exc:
        Unregistrar(cfg).unregister(vm)
    assert _code(exc) == "REGISTRATION_NOT_FOUND"
    # leave the session VM registered for the tests that follow (backup, restore)
    again = Registrar(cfg).register(vm, RegisterOptions())
    assert not again.upgraded and again.config_written
