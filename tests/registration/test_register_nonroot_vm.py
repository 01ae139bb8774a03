"""Registration with a non-root --ssh-user against the real lab VM.

Without passwordless sudo the user is refused with SSH_USER_NOT_PRIVILEGED before anything in the guest changes
(it used to fail half-way with a PermissionError writing /etc/vmbackup-agent/tls). With passwordless sudo
(sudo's .deb fetched by the host's apt, since the lab image has none) registration succeeds: files are uploaded
under a private name and moved into place as root.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import db, settings
from controller.errors import VmBackupError
from controller.registration import guest
from controller.registration.precheck import EndpointOverrides, resolve_endpoints
from controller.registration.register import RegisterOptions, RegisterResult, Registrar
from controller.registration.ssh import UPLOAD_PREFIX, SshSession, connect
from controller.registration.store import get_registration, save
from tests.fixtures_registration import lab_vm_name

USER = "vmbnr"
SUDOERS = "/etc/sudoers.d/vmbackup-test"


def _root_ssh(vm: str) -> SshSession:
    with libvirt.open(settings.load().uri) as conn:
        return connect(resolve_endpoints(conn.lookupByName(vm), EndpointOverrides()).ssh)


@pytest.fixture
def plain_user(registered_vm: RegisterResult, lab_vm: Any) -> Iterator[str]:
    """A guest user (root's authorized key, no sudo rights); removed again, registration row restored."""
    vm = lab_vm_name(lab_vm)
    conn = db.connect(settings.load().db_path)
    with _root_ssh(vm) as s:
        s.check(
            f"id {USER} >/dev/null 2>&1 || useradd -m -s /bin/sh {USER}; rm -f {SUDOERS}; "
            f"install -d -m 700 -o {USER} -g {USER} /home/{USER}/.ssh && "
            f"install -m 600 -o {USER} -g {USER} /root/.ssh/authorized_keys /home/{USER}/.ssh/authorized_keys"
        )
    yield vm
    with _root_ssh(vm) as s:
        s.run(f"rm -f {SUDOERS}; userdel -r {USER}", timeout=60)
    reg = get_registration(conn, registered_vm.registration.vm_uuid)
    if reg is not None and reg.ssh_user != "root":  # later tests reach the guest as root again
        save(conn, dataclasses.replace(reg, ssh_user="root"))


def _as(user: str) -> RegisterOptions:
    return RegisterOptions(endpoints=EndpointOverrides(ssh_user=user))


@pytest.mark.vm
def test_user_without_sudo_is_refused_before_anything_changes(plain_user: str) -> None:
    cfg = settings.load()
    with _root_ssh(plain_user) as s:
        crt = s.read(f"{guest.TLS_DIR}/agent.crt")
    before = get_registration(db.connect(cfg.db_path), _vm_uuid(plain_user))
    assert before is not None and before.ssh_user == "root"
    with pytest.raises(VmBackupError) as exc:
        Registrar(cfg).register(plain_user, _as(USER))
    assert exc.value.code == "SSH_USER_NOT_PRIVILEGED", exc.value
    assert f"'{USER}' is not root" in exc.value.message
    with _root_ssh(plain_user) as s:
        assert s.read(f"{guest.TLS_DIR}/agent.crt") == crt  # nothing was pushed or rewritten
        assert s.run(f"ls -d {guest.STAGING_PREFIX}* {UPLOAD_PREFIX}* 2>/dev/null").out == ""
    assert get_registration(db.connect(cfg.db_path), _vm_uuid(plain_user)) == before


def _vm_uuid(vm: str) -> str:
    with libvirt.open(settings.load().uri) as conn:
        return str(conn.lookupByName(vm).UUIDString())


@pytest.mark.vm
def test_user_with_passwordless_sudo_registers(plain_user: str, tmp_path: Path) -> None:
    with _root_ssh(plain_user) as s:
        if s.run("command -v sudo").rc != 0:
            got = subprocess.run(["apt-get", "download", "sudo"], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=300, check=False)
            debs = sorted(tmp_path.glob("sudo_*.deb"))
            if got.returncode != 0 or not debs:
                pytest.fail(f"no sudo in the lab image and apt could not fetch it: {got.stderr[-200:]}")
            s.put(debs[0], "/var/tmp/sudo.deb", mode=0o600)
            s.check("dpkg -i /var/tmp/sudo.deb && rm -f /var/tmp/sudo.deb", timeout=300, what="installing sudo")
        s.write(SUDOERS, f"{USER} ALL=(ALL) NOPASSWD: ALL\n".encode(), mode=0o440)
    res = Registrar(settings.load()).register(plain_user, _as(USER))
    assert res.registration.ssh_user == USER and res.upgraded
    with _root_ssh(plain_user) as s:
        assert s.check(f"stat -c '%U:%G %a' {guest.TLS_DIR}/agent.key").out.strip() == "root:root 600"
        assert s.check(f"stat -c '%U:%G %a' {guest.TLS_DIR}/ca.crt").out.strip() == "root:root 644"
        assert s.run(f"ls -d {UPLOAD_PREFIX}* 2>/dev/null").out == ""  # no upload left behind
