"""Errors of registration: pre-checks, SSH, bundle, install/upgrade, verify and unregister.

The pre-check codes mirror the seed product's table (code, message, remediation). Two codes of the
table live elsewhere: OPERATION_IN_PROGRESS (the job store's per-VM lock, controller.jobs) and AGENT_TOO_OLD
(controller.agentclient.AgentTooOld, raised here with a registration remediation).
"""

from __future__ import annotations

from controller.errors import VmBackupError


class RegistrationError(VmBackupError):
    """Base of every registration error."""

    code = "REGISTRATION_FAILED"
    operation = "register"
    remediation = (
        "See the job details for the failing phase, fix what it names, then run `vmbackup register` again."
    )


class TooManyDataDisks(RegistrationError):
    code = "TOO_MANY_DATA_DISKS"
    remediation = "Detach disks or raise the limit (vmbackup register --max-data-disks N)."


class VmNotRunning(RegistrationError):
    code = "VM_NOT_RUNNING"
    remediation = "Start it and retry (virsh start NAME)."


class SshEndpointUnknown(RegistrationError):
    code = "SSH_ENDPOINT_UNKNOWN"
    remediation = "Give the guest's SSH endpoint with --ssh-host/--ssh-port/--ssh-user/--ssh-key."


class SshUnreachable(RegistrationError):
    code = "SSH_UNREACHABLE"
    remediation = "Check that the VM has booted, sshd runs in the guest and the SSH host/port are right."


class SshHostKeyChanged(RegistrationError):
    code = "SSH_HOST_KEY_CHANGED"
    remediation = (
        "Either the guest was reinstalled or something intercepts the connection. Compare the presented "
        "fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` run on the VM's console; if they "
        "match, run `vmbackup register VM --accept-new-host-key`."
    )


class SshAuthFailed(RegistrationError):
    code = "SSH_AUTH_FAILED"
    remediation = "Use a key the guest's root (or --ssh-user) accepts: --ssh-key PATH; check authorized_keys."


class SshTransferTimeout(RegistrationError):
    code = "SSH_TRANSFER_TIMEOUT"
    remediation = (
        "The guest stopped answering in the middle of an SFTP transfer (hung guest, full disk, broken network): "
        "check the VM's console and free space under /var/tmp and /etc, then run `vmbackup register VM` again."
    )


class SshUserNotPrivileged(RegistrationError):
    code = "SSH_USER_NOT_PRIVILEGED"
    remediation = (
        "Registration installs a system service, so it needs root in the guest: use --ssh-user root, or give the "
        "SSH user passwordless sudo (in the guest: echo 'USER ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vmbackup)."
    )


class GuestPythonMissing(RegistrationError):
    code = "GUEST_PYTHON_MISSING"
    remediation = (
        "Install python3 and python3-venv in the guest (Debian/Ubuntu: apt-get install python3-venv)."
    )


class GuestCommandFailed(RegistrationError):
    code = "GUEST_COMMAND_FAILED"
    remediation = (
        "A command in the guest failed; the job details keep its output. Fix what it names, then retry."
    )


class AgentInstallTimeout(RegistrationError):
    code = "AGENT_INSTALL_TIMEOUT"
    remediation = (
        "Check the guest OS version is supported (Debian 12 / CPython 3.11 tested); on a slow guest raise "
        "--install-timeout."
    )


class AgentNotReady(RegistrationError):
    code = "AGENT_NOT_READY"
    remediation = (
        "The agent did not answer GetInfo over mTLS in time: check `systemctl status vmbackup-agent` and "
        "`journalctl -u vmbackup-agent` in the guest, and that the agent port is forwarded (--agent-port)."
    )


class BundleBuildFailed(RegistrationError):
    code = "BUNDLE_BUILD_FAILED"
    remediation = (
        "Building the agent bundle failed: the controller must run from a source checkout of vmbackup, and PyPI "
        "(or the pip cache) must provide the agent's dependency wheels once; the details keep pip's output."
    )


class RegistrationNotFound(RegistrationError):
    """unregister: the VM is not registered (a backup of an unregistered VM is backup.exceptions.NotRegistered)."""

    code = "REGISTRATION_NOT_FOUND"
    operation = "unregister"
    remediation = "Nothing to do: the VM is not registered (see `vmbackup register --list`)."


class QgaChannelMissing(RegistrationError):
    code = "QGA_CHANNEL_MISSING"
    remediation = (
        "The domain has no qemu-guest-agent channel. Add one (`virsh edit VM`, inside <devices>: <channel "
        "type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>), restart the VM (virsh "
        "shutdown VM; virsh start VM), then run `vmbackup register VM --quiescer qga` again."
    )


class QgaNotResponding(RegistrationError):
    code = "QGA_NOT_RESPONDING"
    remediation = (
        "The channel exists but qemu-guest-agent does not answer: install and start it in the guest (Debian/Ubuntu: "
        "apt-get install qemu-guest-agent; systemctl enable --now qemu-guest-agent; Windows: the virtio-win guest "
        "tools, with the QEMU Guest Agent VSS Provider), then run `vmbackup register VM --quiescer qga` again."
    )
