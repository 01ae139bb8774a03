"""Running commands in a lab VM over SSH with paramiko (lab key, root), and waiting for SSH to answer."""

from __future__ import annotations

import time

import paramiko

from controller.lab.exceptions import LabSshTimeout
from controller.ssh.client import open_client, quiet_transport
from controller.virt.metadata import LabMetadata


def connect(meta: LabMetadata, timeout: float = 10.0) -> paramiko.SSHClient:
    """An SSH connection to the VM's forwarded port with its lab key (host key not checked: lab VMs)."""
    return open_client(meta.ssh_host, meta.ssh_port, meta.ssh_user, meta.ssh_key, timeout)


def run(meta: LabMetadata, cmd: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run cmd in the VM; return (exit status, stdout, stderr)."""
    client = connect(meta, timeout=min(timeout, 15.0))
    try:
        _stdin, stdout, stderr = client.exec_command(cmd, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def wait_for_ssh(meta: LabMetadata, timeout: float = 180.0) -> float:
    """Block until `true` runs over SSH; return the seconds waited, or raise LabSshTimeout."""
    with quiet_transport():
        return _wait(meta, timeout)


def _wait(meta: LabMetadata, timeout: float) -> float:
    """The polling loop of wait_for_ssh."""
    t0 = time.monotonic()
    last = ""
    while True:
        try:
            rc, _out, _err = run(meta, "true", timeout=10.0)
            if rc == 0:
                return time.monotonic() - t0
            last = f"`true` exited {rc}"
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > timeout:
            raise LabSshTimeout(
                f"no SSH on {meta.ssh_host}:{meta.ssh_port} after {timeout:.0f} s ({last}); "
                f"console log: {meta.console_path}",
                details={"console": meta.console_path, "last_error": last},
            )
        time.sleep(1.0)
