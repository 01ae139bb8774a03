"""Registration without the vmbackup agent: the QEMU guest agent (``--quiescer qga``), and ``auto``'s fallbacks.

Nothing is installed and no SSH is used: the pre-check asks libvirt whether the domain has the qemu-guest-agent
channel and whether qemu-ga answers guestInfo in a few seconds, and the registration row records the quiescer with
empty agent/SSH endpoints. ``--quiescer auto`` tries the vmbackup agent first; when it cannot be installed
(:data:`NOT_INSTALLABLE`) it registers qga if it answers, else "none" (every backup crash-consistent) with a warning.
"""

from __future__ import annotations

import libvirt

from controller.agentclient import AgentInfo
from controller.backup import qga
from controller.registration.exceptions import (
    GuestPythonMissing,
    QgaChannelMissing,
    QgaNotResponding,
    SshAuthFailed,
    SshEndpointUnknown,
    SshUnreachable,
    SshUserNotPrivileged,
)
from controller.registration.store import Registration, now_iso

#: what --quiescer accepts
MODES = ("auto", "agent", "qga")
#: the errors that mean "the vmbackup agent cannot be installed into this guest" (auto falls back on them only;
#: a changed SSH host key or a failed install is never papered over)
NOT_INSTALLABLE = (SshEndpointUnknown, SshUnreachable, SshAuthFailed, SshUserNotPrivileged, GuestPythonMissing)


def check_qga(dom: libvirt.virDomain, timeout_s: float = qga.PING_TIMEOUT_S) -> qga.GuestOs:
    """Pre-check: the channel is in the domain XML, and qemu-ga answers guestInfo; QGA_CHANNEL_MISSING or
    QGA_NOT_RESPONDING (with what to do) otherwise."""
    state = qga.channel_state(dom)
    name = dom.name()
    if state is None:
        raise QgaChannelMissing(
            f"VM {name!r} has no qemu-guest-agent channel ({qga.QGA_CHANNEL}) in its domain XML",
            details={"channel": qga.QGA_CHANNEL},
        )
    if state == "disconnected":
        raise QgaNotResponding(
            f"qemu-guest-agent is not running in VM {name!r}: its channel is disconnected (libvirt)",
            details={"channel_state": state},
        )
    try:
        return qga.ping(dom, timeout_s)
    except libvirt.libvirtError as e:
        raise QgaNotResponding(
            f"qemu-guest-agent in VM {name!r} did not answer guestInfo in {timeout_s:g} s: {e.get_error_message()}",
            details={"channel_state": state, "libvirt": e.get_error_message()},
        ) from e


def registration(vm_uuid: str, vm_name: str, host_uri: str, quiescer: str) -> Registration:
    """The row of an agentless registration ("qga" or "none"): no agent or SSH endpoint, no certificate."""
    return Registration(
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        host_uri=host_uri,
        agent_host="",
        agent_port=0,
        ssh_host="",
        ssh_port=0,
        ssh_user="",
        ssh_key=None,
        agent_version="",
        cert_serial="",
        registered_at=now_iso(),
        quiescer=quiescer,
    )


def info(gos: qga.GuestOs | None, quiescer: str) -> AgentInfo:
    """What the CLI shows for an agentless registration, in the shape of the agent's GetInfo."""
    return AgentInfo(
        agent_version="",
        api_version=0,
        os=gos.id if gos else "",
        os_release=gos.name if gos else "",
        kernel=gos.kernel if gos else "",
        hostname=gos.hostname if gos else "",
        filesystems=[],
        hooks=[],
        capabilities=[],
        quiescer=quiescer,
        max_freeze_timeout_s=0.0,
    )
