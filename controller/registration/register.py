"""Register a VM: pre-checks, push the agent bundle over SSH, install/upgrade, configure mTLS, start, verify.

One job per VM, with phases precheck, connect, push, install, configure, start, verify::

    r = Registrar(state)                 # a State (borrowed), or Settings (opens one; close() or `with`)
    result = r.register("web1", RegisterOptions(max_data_disks=5))
    results = r.register_many(["web1", "db1"], RegisterOptions(), concurrency=2)   # RegisterResult | error

Re-registering a registered VM upgrades the agent in place: the venv is reused, config.yaml is kept, a new
certificate is installed and the previous one revoked once the agent answers with the new one.

``RegisterOptions(quiescer=...)``: "agent" (the above), "qga" (nothing installed, no SSH: the QEMU guest agent through
libvirt, see agentless.py) or "auto" (the agent where it can be installed, else qga if it answers, else none; the
CLI's default). "auto" never downgrades a VM that already has the vmbackup agent: re-registering it (an upgrade) while
its SSH is unreachable fails with that error instead of switching it to qga.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import libvirt

from controller.agentclient import (
    AgentAddress,
    AgentInfo,
    AgentRefused,
    AgentTooOld,
    AgentUnreachable,
    ClientTLS,
    open_agent,
)
from controller.backup.qga import GuestOs
from controller.errors import VmBackupError
from controller.jobs.store import JobRun, JobStore, VmRef
from controller.pki import CertificateAuthority, IssuedCert
from controller.registration import agentless, guest
from controller.registration.bundle import Bundle, build_bundle
from controller.registration.exceptions import AgentNotReady, QgaChannelMissing, QgaNotResponding
from controller.registration.hostkeys import HostKeyStore
from controller.registration.precheck import (
    DEFAULT_MAX_DATA_DISKS,
    EndpointOverrides,
    Endpoints,
    check_data_disks,
    check_devices,
    check_running,
    resolve_endpoints,
)
from controller.registration.ssh import SshSession, wait_connect
from controller.registration.store import Registration, get_registration, now_iso, save
from controller.settings import Settings
from controller.state import State, StateUser
from controller.virt.connection import connection, lookup

#: The oldest agent this controller accepts after an install.
MIN_AGENT_VERSION = "0.1.0"


@dataclass(frozen=True)
class RegisterOptions:
    """Knobs of one registration (CLI flags)."""

    endpoints: EndpointOverrides = field(default_factory=EndpointOverrides)
    uri: str | None = None
    max_data_disks: int = DEFAULT_MAX_DATA_DISKS
    install_timeout_s: float = 900.0
    ready_timeout_s: float = 180.0
    ssh_wait_s: float = 0.0
    min_agent_version: str = MIN_AGENT_VERSION
    exclude_disks: tuple[str, ...] = ()  # device targets the backups will not copy (pre-check passes them)
    accept_new_host_key: bool = False  # the operator verified a changed SSH host key (see hostkeys.py)
    quiescer: str = "agent"  # agent | qga | auto (agentless.MODES)


@dataclass(frozen=True)
class RegisterResult:
    """What a registration did."""

    job_id: str
    registration: Registration
    info: AgentInfo
    upgraded: bool
    config_written: bool
    timings: dict[str, float]
    warnings: tuple[str, ...] = ()  # e.g. auto's fallback: why the agent was not installed


def version_tuple(v: str) -> tuple[int, ...]:
    """'0.10.2' -> (0, 10, 2); non-numeric parts count as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("+")[0].split("."))


class Registrar(StateUser):
    """Registers and upgrades agents; shares one state DB, CA and bundle cache."""

    def __init__(self, source: Settings | State) -> None:
        state = self._use_state(source)
        self.settings = settings = state.settings
        self.conn = state.db
        self.jobs = JobStore(self.conn)
        self.ca = CertificateAuthority.load_or_create(settings.pki_dir)
        self.host_keys = HostKeyStore.of(settings)

    def register_many(
        self, vms: list[str], opts: RegisterOptions, concurrency: int = 2
    ) -> list[RegisterResult | VmBackupError]:
        """Register several VMs with a bounded thread pool; each entry is a result or the typed error."""

        def one(vm: str) -> RegisterResult | VmBackupError:
            try:  # one Registrar (own SQLite connection) per VM: connections are not shared across threads
                with Registrar(self.settings) as registrar:
                    return registrar.register(vm, opts)
            except VmBackupError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="register") as pool:
            return list(pool.map(one, vms))

    def register(self, vm: str, opts: RegisterOptions) -> RegisterResult:
        """Register (or upgrade) one VM as a job; raise the typed error of the first failing step."""
        uri = opts.uri or self.settings.uri
        with connection(uri) as lv:
            dom = lookup(lv, vm)
            ref = VmRef(uuid=dom.UUIDString(), name=dom.name(), host_uri=uri)
            job = self.jobs.create("register", vm=ref)
            with self.jobs.run(job.id) as run:
                run.detail("quiescer_requested", opts.quiescer)
                mode = self._mode(ref.uuid, opts.quiescer)
                ends: Endpoints | None = None
                why: VmBackupError | None = None
                with run.phase("precheck"):
                    check_data_disks(dom, opts.max_data_disks)
                    check_devices(dom, opts.exclude_disks)
                    check_running(dom)
                    if mode == "qga":
                        gos = agentless.check_qga(dom)
                        return self._agentless(run, job.id, ref, "qga", gos, [])
                    try:
                        ends = resolve_endpoints(dom, opts.endpoints)
                    except agentless.NOT_INSTALLABLE as e:
                        if mode != "auto":
                            raise
                        why = e
                if ends is not None:
                    try:
                        return self._install(run, job.id, ref, ends, opts)
                    except agentless.NOT_INSTALLABLE as e:
                        if mode != "auto":
                            raise
                        why = e
                assert why is not None
                return self._fallback(run, job.id, ref, dom, why)

    def _mode(self, vm_uuid: str, requested: str) -> str:
        """The mode to run: "auto" for a VM registered with the vmbackup agent is "agent" (an upgrade never falls
        back to qga or none: that would drop a working agent because SSH failed once)."""
        if requested != "auto":
            return requested
        previous = get_registration(self.conn, vm_uuid)
        return "agent" if previous is not None and previous.quiescer == "agent" else "auto"

    def _fallback(
        self, run: JobRun, job_id: str, ref: VmRef, dom: libvirt.virDomain, why: VmBackupError
    ) -> RegisterResult:
        """--quiescer auto when the agent cannot be installed: qga if it answers, else none (CRASH backups)."""
        warnings = [f"vmbackup agent not installed ({why.code}: {why.message})"]
        try:
            with run.phase("qga"):
                gos = agentless.check_qga(dom)
        except (QgaChannelMissing, QgaNotResponding) as e:
            warnings.append(f"no qemu-guest-agent either ({e.code}: {e.message}): backups will be CRASH-consistent")
            return self._agentless(run, job_id, ref, "none", None, warnings)
        warnings.append("using qemu-guest-agent: backups FILE_SYSTEM-consistent at best")
        return self._agentless(run, job_id, ref, "qga", gos, warnings)

    def _agentless(
        self, run: JobRun, job_id: str, ref: VmRef, quiescer: str, gos: GuestOs | None, warnings: list[str]
    ) -> RegisterResult:
        """Save a registration without the vmbackup agent; a previous agent's certificate is revoked (the agent
        itself stays in the guest: nothing here reaches it; `vmbackup unregister` first removes it)."""
        start = time.monotonic()
        with run.phase("save"):
            previous = get_registration(self.conn, ref.uuid)
            reg = agentless.registration(ref.uuid, ref.name, ref.host_uri, quiescer)
            save(self.conn, reg)
            if previous is not None and previous.cert_serial:
                self.ca.revoke(int(previous.cert_serial, 16))
        for w in warnings:
            run.warn(w)
        run.detail("quiescer", quiescer)
        t = {"total_s": time.monotonic() - start}
        return RegisterResult(job_id, reg, agentless.info(gos, quiescer), False, False, t, tuple(warnings))

    def _push(self, run: JobRun, s: SshSession, py: str) -> tuple[float, str, Bundle]:
        """Build (or reuse) the bundle for the guest's Python and push it; returns (seconds, staged dir, bundle)."""
        with run.phase("push"):
            bundle = build_bundle(self.settings.home / "bundles", python_version=py)
            run.detail("bundle", bundle.key)
            mark = time.monotonic()
            staged = guest.push_bundle(s, bundle)
            run.add_bytes(bundle.tar_path.stat().st_size)
            return time.monotonic() - mark, staged, bundle

    def _install(
        self, run: JobRun, job_id: str, ref: VmRef, ends: Endpoints, opts: RegisterOptions
    ) -> RegisterResult:
        """The phases after the pre-checks."""
        t: dict[str, float] = {}
        start = time.monotonic()
        with run.phase("connect"):
            s = wait_connect(ends.ssh, opts.ssh_wait_s)
            try:
                trust = self.host_keys.check(ref.uuid, ref.name, s.host_key(), opts.accept_new_host_key)
                run.detail("ssh_host_key", trust)
                run.detail("guest_privilege", guest.check_privilege(s))
                py = guest.probe_python(s)
                upgraded = guest.is_installed(s)
            except BaseException:
                s.close()
                raise
            t["connect_s"] = time.monotonic() - start
            run.detail("guest_python", py)
            run.detail("upgrade", upgraded)
        with s:
            try:
                t_push, staged, bundle = self._push(run, s, py)
                t["push_s"] = t_push
                with run.phase("install"):
                    t["install_s"] = guest.install_venv(s, bundle, staged, opts.install_timeout_s)
                with run.phase("configure"):
                    issued = self.ca.issue_agent_cert(ref.uuid, ref.name)
                    config_written = guest.configure(s, self.ca.ca_pem, issued)
                    run.detail("config_written", config_written)
                    run.detail("cert_serial", issued.serial_hex)
                with run.phase("start"):
                    mark = time.monotonic()
                    guest.start(s, staged)
                    t["start_s"] = time.monotonic() - mark
            finally:  # a failed or timed-out install must not leave the bundle in the guest's /var/tmp
                with contextlib.suppress(VmBackupError, OSError):
                    guest.cleanup_staging(s)
        with run.phase("verify"):
            mark = time.monotonic()
            info = self._verify(ref.uuid, ends, issued, opts)
            t["verify_s"] = time.monotonic() - mark
            previous = get_registration(self.conn, ref.uuid)
            reg = Registration(
                vm_uuid=ref.uuid,
                vm_name=ref.name,
                host_uri=ref.host_uri,
                agent_host=ends.agent_host,
                agent_port=ends.agent_port,
                ssh_host=ends.ssh.host,
                ssh_port=ends.ssh.port,
                ssh_user=ends.ssh.user,
                ssh_key=ends.ssh.key,
                agent_version=info.agent_version,
                cert_serial=issued.serial_hex,
                registered_at=now_iso(),
            )
            save(self.conn, reg)
            if previous is not None and previous.cert_serial and previous.cert_serial != issued.serial_hex:
                self.ca.revoke(int(previous.cert_serial, 16))
        t["total_s"] = time.monotonic() - start
        run.detail("agent_version", info.agent_version)
        run.detail("quiescer", "agent")
        run.detail("timings", {k: round(v, 2) for k, v in t.items()})
        return RegisterResult(job_id, reg, info, upgraded, config_written, t)

    def _verify(self, vm_uuid: str, ends: Endpoints, issued: IssuedCert, opts: RegisterOptions) -> AgentInfo:
        """GetInfo over mTLS until the agent answers with the new certificate (bounded); check its version."""
        tls = ClientTLS.from_pki(self.ca)
        deadline = time.monotonic() + opts.ready_timeout_s
        last: VmBackupError | None = None
        while time.monotonic() < deadline:
            try:
                with open_agent(
                    self.settings,
                    AgentAddress(ends.agent_host, ends.agent_port, vm_uuid),
                    tls=tls,
                    call_timeout_s=10.0,
                    check_revocation=False,
                ) as client:
                    serial = client.verify_server_cert()
                    if serial != issued.serial:
                        raise AgentRefused(
                            f"agent still presents certificate {serial:x}, not {issued.serial_hex}"
                        )
                    info = client.get_info()
                break
            except (AgentUnreachable, AgentRefused) as exc:
                last = exc
                time.sleep(2.0)
        else:
            raise AgentNotReady(
                f"the agent at {ends.agent_host}:{ends.agent_port} did not answer in "
                f"{opts.ready_timeout_s:g} s: "
                f"{last.message if last else 'no attempt'}",
                details={"last_error": last.to_dict() if last else None},
            )
        if version_tuple(info.agent_version) < version_tuple(opts.min_agent_version):
            raise AgentTooOld(
                f"agent {info.agent_version} is older than the minimum {opts.min_agent_version}",
                remediation="Check the guest OS version is supported; re-register with a current vmbackup.",
            )
        return info
