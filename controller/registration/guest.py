"""What registration does inside the guest, one function per step, over an open SshSession.

Fixed paths (docs/design.md): venv /opt/vmbackup-agent/venv, config /etc/vmbackup-agent/config.yaml, TLS files
/etc/vmbackup-agent/tls/{agent.crt,agent.key,ca.crt}, unit /etc/systemd/system/vmbackup-agent.service.
Nothing the agent needs at run time stays under /var/tmp: the bundle is unpacked there only to install.
"""

from __future__ import annotations

import posixpath
import shlex

import yaml

from agent.contract import AGENT_PORT
from controller.pki import IssuedCert
from controller.registration.bundle import Bundle
from controller.registration.exceptions import (
    AgentInstallTimeout,
    GuestCommandFailed,
    GuestPythonMissing,
    SshUserNotPrivileged,
)
from controller.registration.ssh import UPLOAD_PREFIX, CommandTimeout, Result, SshSession

VENV = "/opt/vmbackup-agent/venv"
AGENT_ROOT = "/opt/vmbackup-agent"
CONF_DIR = "/etc/vmbackup-agent"
CONFIG = f"{CONF_DIR}/config.yaml"
TLS_DIR = f"{CONF_DIR}/tls"
HOOKS_DIR = f"{CONF_DIR}/hooks.d"
UNIT = "vmbackup-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
STAGING_PREFIX = "/var/tmp/vmbackup-agent-bundle-"

_PROBE = (
    "command -v python3 >/dev/null 2>&1 || { echo 'python3: not found' >&2; exit 3; }; "
    "python3 -c 'import sys, venv, ensurepip; print(\"%d.%d\" % sys.version_info[:2])'"
)


def default_config() -> dict[str, object]:
    """The config.yaml written on first registration (agent/config.py documents every key)."""
    return {
        "listen_address": "0.0.0.0",
        "port": AGENT_PORT,
        "tls_cert": f"{TLS_DIR}/agent.crt",
        "tls_key": f"{TLS_DIR}/agent.key",
        "tls_ca": f"{TLS_DIR}/ca.crt",
        "hooks_dir": HOOKS_DIR,
        "freeze_timeout_s": 10,
        "max_freeze_timeout_s": 60,
        "hook_timeout_s": 30,
    }


def check_privilege(s: SshSession) -> str:
    """How commands get root in the guest: "root" (the SSH user is uid 0) or "sudo" (passwordless ``sudo -n``).

    Runs before anything is changed, so a user that can do neither is refused with SshUserNotPrivileged instead
    of failing half-way (a PermissionError writing /etc/vmbackup-agent/tls). Sets ``s.as_root`` accordingly.
    """
    if s.as_root:
        return "root"
    uid = s.run("id -u", timeout=30, as_user=True)
    sudo = None if _is_uid0(uid) else s.run("id -u", timeout=30)  # run() puts `sudo -n` in front
    how = privilege_of(s.endpoint.user, uid, sudo)
    s.as_root = how == "root"
    return how


def _is_uid0(res: Result) -> bool:
    return res.rc == 0 and res.out.strip() == "0"


def privilege_of(user: str, uid: Result, sudo: Result | None) -> str:
    """The decision of :func:`check_privilege` from ``id -u`` as the user and ``sudo -n id -u`` (None: not run)."""
    if _is_uid0(uid):
        return "root"
    if sudo is not None and _is_uid0(sudo):
        return "sudo"
    why = "not run" if sudo is None else ((sudo.err or sudo.out).strip().splitlines() or [f"exit {sudo.rc}"])[-1]
    raise SshUserNotPrivileged(
        f"SSH user {user!r} is not root (uid {uid.out.strip() or '?'}) and has no passwordless sudo ({why})",
        details={"user": user, "uid": uid.out.strip(), "sudo": why},
    )


def probe_python(s: SshSession) -> str:
    """The guest's python3 version ("3.11"); GuestPythonMissing without python3 or its venv module."""
    res = s.run(_PROBE, timeout=60)
    if res.rc != 0:
        why = (res.err.strip().splitlines() or ["unknown error"])[-1]
        raise GuestPythonMissing(
            f"python3 with the venv module is not usable in the guest: {why}",
            details={"exit_code": res.rc, "stderr": res.err[-2000:]},
        )
    return res.out.strip()


def staging_dir(bundle: Bundle) -> str:
    """Where the bundle is unpacked in the guest while installing."""
    return f"{STAGING_PREFIX}{bundle.key}"


def push_bundle(s: SshSession, bundle: Bundle) -> str:
    """Copy the bundle tar to /var/tmp over SFTP and unpack it; return the unpacked directory."""
    target = staging_dir(bundle)
    tar = f"{target}.tar"
    s.put(bundle.tar_path, tar, mode=0o600)
    s.check(
        f"rm -rf {target} && mkdir -m 700 {target} && tar -xf {tar} -C {target} && rm -f {tar}",
        timeout=120,
        what="unpacking the agent bundle",
    )
    return target


def install_script(bundle: Bundle, staged: str, venv: str = VENV, python3: str = "python3") -> str:
    """The sh script that creates (or reuses) the venv and pip installs the unpacked bundle offline.

    The venv is made without pip (ensurepip is the slowest part under emulation); the bundle's pip runs straight
    from its wheel with the venv's interpreter, which installs into that venv. A venv whose interpreter does not
    start (an interrupted first install) is made again. Ends by printing the installed agent's version.
    """
    # byte-compiled at install time on purpose: the agent never writes .pyc itself (it may run while filesystems are
    # frozen), so without them every agent start would compile grpc/protobuf in memory, slow under emulation
    q = shlex.quote
    installer = q(f"{staged}/installer/{bundle.manifest['installer_wheel']}/pip")
    pip = f"{q(venv)}/bin/python {installer} install --disable-pip-version-check --no-index --no-cache-dir -q"
    wheels = q(f"{staged}/wheels")
    agent_wheel = q(f"{staged}/wheels/{bundle.manifest['agent_wheel']}")
    return (
        f"set -e; mkdir -p {q(posixpath.dirname(venv))}; "
        f"{q(venv)}/bin/python -c 'import sys' 2>/dev/null || {q(python3)} -m venv --clear --without-pip {q(venv)}; "
        f"{pip} --find-links {wheels} -r {q(staged + '/requirements.txt')}; "
        f"{pip} --no-deps --force-reinstall {agent_wheel}; "
        f"{q(venv)}/bin/vmbackup-agent --version"
    )


def install_venv(s: SshSession, bundle: Bundle, staged: str, timeout_s: float) -> float:
    """Run install_script in the guest under a deadline; return the seconds it took."""
    cmd = install_script(bundle, staged)
    limit = max(1, int(timeout_s))
    guarded = f"timeout -k 5 {limit} sh -c {shlex.quote(cmd)}"  # the guest enforces the deadline too
    try:
        res = s.run(guarded, timeout=limit + 30)
    except CommandTimeout as exc:
        raise _install_timeout(timeout_s) from exc
    if res.rc in (124, 137):  # timeout(1): TERM sent, or KILL after the grace period
        raise _install_timeout(timeout_s)
    if res.rc != 0:
        tail = "\n".join((res.err or res.out).strip().splitlines()[-20:])
        raise GuestCommandFailed(
            f"installing the agent into its venv failed (exit {res.rc})",
            details={"exit_code": res.rc, "output": tail},
        )
    if bundle.agent_version not in res.out:
        raise GuestCommandFailed(
            f"installed agent reports {res.out.strip()!r}, expected {bundle.agent_version}"
        )
    return res.seconds


def _install_timeout(timeout_s: float) -> AgentInstallTimeout:
    """The typed error for an install over its deadline."""
    return AgentInstallTimeout(
        f"installing the agent did not finish in {timeout_s:g} s", details={"timeout_s": timeout_s}
    )


def configure(s: SshSession, ca_pem: bytes, issued: IssuedCert) -> bool:
    """Write the TLS files (key 0600) and, only if absent, config.yaml; True when the config was written."""
    s.check(f"mkdir -p {CONF_DIR} {HOOKS_DIR} {TLS_DIR} && chmod 700 {TLS_DIR}", what="creating config dirs")
    s.write(f"{TLS_DIR}/agent.key", issued.key_pem, mode=0o600)
    s.write(f"{TLS_DIR}/agent.crt", issued.cert_pem, mode=0o644)
    s.write(f"{TLS_DIR}/ca.crt", ca_pem, mode=0o644)
    if s.exists(CONFIG):
        return False
    text = "# vmbackup-agent config, written by `vmbackup register`; kept on re-register.\n"
    text += yaml.safe_dump(default_config(), sort_keys=False)
    s.write(CONFIG, text.encode(), mode=0o644)
    return True


def start(s: SshSession, staged: str, timeout_s: float = 120) -> None:
    """Install the unit, enable it and (re)start the agent; fail when systemd does not report it active."""
    s.check(
        f"install -m 644 {staged}/{UNIT} {UNIT_PATH} && systemctl daemon-reload && systemctl enable {UNIT} "
        f"&& systemctl restart {UNIT}",
        timeout=timeout_s,
        what="starting vmbackup-agent",
    )
    res = s.run(f"sleep 1; systemctl is-active {UNIT}", timeout=30)
    if res.out.strip() not in ("active", "activating"):
        log = s.run(f"journalctl -u {UNIT} -n 20 --no-pager", timeout=30).out
        raise GuestCommandFailed(
            f"vmbackup-agent is {res.out.strip() or 'not active'} after start",
            details={"journal": log[-3000:]},
        )


def cleanup_staging(s: SshSession) -> None:
    """Remove unpacked bundles (and a non-root user's leftover uploads) from /var/tmp."""
    s.run(f"rm -rf {STAGING_PREFIX}* {UPLOAD_PREFIX}*", timeout=60)


def is_installed(s: SshSession) -> bool:
    """Whether an agent was installed before (an upgrade rather than a first install).

    The config counts too: an upgrade that was interrupted half-way (e.g. by the install deadline) may have removed
    the old entry point before installing the new one, and the next register must still treat it as an upgrade.
    """
    return s.exists(f"{VENV}/bin/vmbackup-agent") or s.exists(CONFIG)


def remove_agent(s: SshSession) -> None:
    """Stop and disable the unit, remove it, the venv and the config (unregister)."""
    s.run(f"systemctl disable --now {UNIT}", timeout=120)
    s.check(
        f"rm -f {UNIT_PATH} && systemctl daemon-reload && rm -rf {AGENT_ROOT} {CONF_DIR} {STAGING_PREFIX}*",
        timeout=120,
        what="removing the agent",
    )
