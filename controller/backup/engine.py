"""The backup flow for one VM, as one job.

Running VM::

    precheck -> [intent] -> Freeze (agent) -> atomic external snapshot of all disks -> Thaw -> copy each (now
    read-only) original image into the vault -> publish the recovery point -> active commit + pivot -> delete overlays

Nothing slow happens while the guest is frozen: the window spans two gRPC calls and one libvirt snapshot, whatever
the disk size. A shut-off VM is copied directly and recorded CRASH-consistent. Usage::

    engine = BackupEngine(state)         # a State (borrowed), or Settings (opens one; close() or `with`)
    result = engine.run(BackupRequest(vm="web1"))
    print(result.point_id, result.consistency, result.freeze_window_ms)

Any failure (or a cancel) takes the same undo path: thaw, merge the overlays back, drop the unpublished point.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

import controller
from agent.contract import consistency_rank
from controller import db
from controller.backup import cbt, faults, imagelock, qsd, quiesce, space
from controller.backup.disksource import backup_plan, overlay_dir
from controller.backup.exceptions import (
    BitmapInconsistent,
    BitmapMissing,
    CheckpointFailed,
    ConsistencyNotMet,
    ImageLockFailed,
    NotRegistered,
    RemoteDataPathUnsupported,
)
from controller.backup.intent import IntentStore
from controller.backup.quiescers import quiescer_for
from controller.backup.recovery import put_back, recover
from controller.backup.snapshot import SnapshotInFlight, prepare_snapshot
from controller.datapath import ioprio
from controller.errors import VmBackupError
from controller.jobs.store import JobRun, JobStore, VmRef
from controller.registration.store import Registration, get_registration
from controller.settings import Settings
from controller.state import State, StateUser
from controller.vault import compress, merge
from controller.vault.manifest import DiskRecord
from controller.vault.writer import PointWriter
from controller.virt.connection import connection, is_this_host, lookup
from controller.virt.domain import Disk, state_name

#: states in which QEMU runs and holds the disks open: backed up by the external snapshot, never copied directly
LIVE_STATES = ("running", "blocked", "paused")
#: progress(target, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]


@dataclass
class BackupRequest:
    """What to back up and how."""

    vm: str
    host_uri: str | None = None
    policy: str | None = None
    exclude_disks: tuple[str, ...] = ()  # targets not copied (the policy's exclude_disks); listed in the manifest
    min_consistency: str | None = None
    freeze_timeout_s: float = 10.0
    full: bool = False  # --full: no incremental, whatever the chain's health
    full_every: str | None = None  # the policy's: "7" (backups) or "7d" (days since the chain's full)
    compression: str = compress.DEFAULT  # "zstd" | "none": how stored images are compressed, where it pays


@dataclass
class BackupResult:
    """What a backup produced."""

    job_id: str
    point_id: str
    vm_uuid: str
    vm_name: str
    consistency: str
    consistency_reason: str
    freeze_window_ms: float | None
    bytes_copied: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    point_type: str = "full"  # "full" or "incremental"
    parent: str | None = None  # the parent point of an incremental
    full_reason: str | None = None  # why a full replaced an expected incremental
    changed_bytes: int | None = None  # bytes the copy found changed (incremental) or allocated (full)


class BackupEngine(StateUser):
    """Runs backups against the state DB, the vault and libvirt named by the settings."""

    def __init__(self, source: Settings | State, progress: Progress | None = None):
        state = self._use_state(source)
        self.settings = settings = state.settings
        self.conn = state.db  # jobs: WAL + synchronous=NORMAL, no fsync per commit
        self.jobs = JobStore(self.conn)
        # intent records must survive a crash right after they are written: their own connection fsyncs each commit
        # (the WAL is shared, so that fsync also makes every earlier job row durable)
        self.intent_conn = db.connect(settings.db_path)
        self.intent_conn.execute("PRAGMA synchronous=FULL")
        self.intents = IntentStore(self.intent_conn)
        self.vault = state.vault
        self.progress = progress
        self._recovered = False

    def close(self) -> None:
        """Close the intents' connection, and the State if the engine opened it (one engine per backup in serve)."""
        self.intent_conn.close()
        super().close()

    def run(self, req: BackupRequest) -> BackupResult:
        """Back up one VM as a job; raises the job's error if it fails."""
        uri = req.host_uri or self.settings.uri
        if not self._recovered:  # a controller that died mid-backup left intents: put those VMs back first
            recover(self.state)
            self._recovered = True
        with connection(uri) as lv:
            dom = lookup(lv, req.vm)
            ref = VmRef(uuid=dom.UUIDString(), name=dom.name(), host_uri=uri)
            job = self.jobs.create("backup", vm=ref)
            # the chain lock: no prune or delete touches this VM's points while a backup may build on the newest
            with self.jobs.run(job.id) as run, merge.chain_lock(self.vault, ref.uuid):
                return self._backup(run, dom, ref, req)

    def _backup(self, run: JobRun, dom: libvirt.virDomain, ref: VmRef, req: BackupRequest) -> BackupResult:
        """The flow inside the job."""
        t0 = time.monotonic()
        with run.phase("precheck"):
            _check_local(dom, ref, self.settings.home)
            reg = get_registration(self.conn, ref.uuid)
            if reg is None:
                raise NotRegistered(f"VM {ref.name!r} is not registered")
            dplan = backup_plan(dom, req.exclude_disks)  # UNSUPPORTED_DISK for network disks, passthrough, ...
            ds = dplan.disks
            state = state_name(dom)
            running = state in LIVE_STATES  # paused too: QEMU holds the images open, so the snapshot path
            chain = cbt.plan_chain(self.conn, self.vault, dom, ds, req.full, req.full_every)
            run.detail("chain", {"parent": chain.parent and chain.parent.point_id, "full_reason": chain.full_reason})
            # the predicted size (space.py) plus a margin, before any freeze (ENOSPC later still ends in VAULT_FULL)
            pred = space.predict(self.vault, dom, ds, chain, running, overlay_dir(self.settings.home, ref.uuid),
                                 req.compression)  # fmt: skip
            run.detail("space", pred.to_dict())  # compared with the point's stored bytes (the job's bytes)
            space.check(self.vault, pred)
        writer = self.vault.new_point(ref.uuid)  # its id sorts after the VM's newest point
        point_id = writer.point_id
        try:
            if running:
                q = self._snapshot_running(run, dom, ref, ds, req, reg, chain)
            else:
                q = quiesce.Quiesce("CRASH", f"the VM was {state_name(dom)}: copied directly, nothing to quiesce")
                self.intents.begin(run.job_id, ref.uuid, ref.name, ref.host_uri, {d.target: d.path for d in ds})
                # no checkpoint can be made while it is off; the parent's still marks every write since the parent
                # (a superset of those since this point), so this point carries it on
                chain.new_checkpoint = chain.checkpoint
            with contextlib.nullcontext() if running else imagelock.held(ds):
                if not running and dom.isActive():
                    raise ImageLockFailed(f"VM {ref.name!r} was started before its disks could be locked for the copy")
                copied = self._copy(run, writer, ds, dom, chain, req.compression)
            q.created = q.created or _utcnow()
            run.detail("consistency", q.consistency)
            run.detail("consistency_reason", q.reason)
            manifest = {**self._manifest(ref, req, q, run.job_id, dom), **chain.manifest_fields(writer.disks)}
            manifest["skipped"] = [o.to_dict() for o in dplan.skipped]
            point = writer.publish(manifest)
            self.intents.step(run.job_id, "copied", point_id=point_id)
            if running:
                faults.checkpoint("before-commit")
                self._commit_all(run, dom, ds)
        except BaseException:
            self._undo(dom, run.job_id, ds, writer, chain.new_checkpoint if running else None)
            raise
        self.intents.done(run.job_id)
        if running:
            self._drop_old_checkpoints(run, dom, chain.new_checkpoint)
        for w in q.warnings + chain.warnings():
            run.warn(w)
        m = point.manifest
        if m.type == "full":
            cbt.clear_reset(self.conn, ref.uuid)  # a new chain starts here
        run.detail("point_type", m.type)
        run.detail("full_reason", m.full_reason)
        if req.min_consistency and consistency_rank(q.consistency) < consistency_rank(req.min_consistency):
            raise ConsistencyNotMet(
                f"reached {q.consistency} ({q.reason}); the policy requires {req.min_consistency}",
                details={"point_id": point_id},
            )
        return BackupResult(
            job_id=run.job_id,
            point_id=point_id,
            vm_uuid=ref.uuid,
            vm_name=ref.name,
            consistency=q.consistency,
            consistency_reason=q.reason,
            freeze_window_ms=q.window_ms,
            bytes_copied=copied,
            duration_s=time.monotonic() - t0,
            warnings=list(q.warnings) + chain.warnings(),
            point_type=m.type,
            parent=m.parent,
            full_reason=m.full_reason,
            changed_bytes=sum(d.changed_bytes or 0 for d in m.disks) if m.type == "incremental" else None,
        )

    def _snapshot_running(
        self,
        run: JobRun,
        dom: libvirt.virDomain,
        ref: VmRef,
        ds: list[Disk],
        req: BackupRequest,
        reg: Registration,
        chain: cbt.ChainPlan,
    ) -> quiesce.Quiesce:
        """Checkpoint, prepare the snapshot, freeze, snapshot, thaw; returns the consistency reached and the window.

        Between the Freeze reply and the Thaw call only libvirt's snapshot call is waited for: its overlay files and
        XML are made before the freeze, the intent and phase records are written while libvirt works (two phase rows,
        a few microseconds each, between its end and the Thaw call; the rest after the thaw), the agent's connection
        is the one the Freeze went over, and no garbage collection runs.
        """
        self.intents.begin(run.job_id, ref.uuid, ref.name, ref.host_uri, {d.target: d.path for d in ds})
        # before the freeze (and so before the snapshot): a write in between is in this point AND marked in the new
        # checkpoint, copied again next time (a duplicate, never a loss); crash recovery resets the chain
        with run.phase("checkpoint"):
            try:
                chain.new_checkpoint = cbt.create(dom, run.job_id, ds, chain.trackable)
            except CheckpointFailed as e:
                chain.notes.append(f"no checkpoint, the next backup is a full: {e.message}")
        with run.phase("prepare"):  # overlays named after the job: undo and crash recovery delete them
            prep = prepare_snapshot(dom, ds, run.job_id, overlay_dir(self.settings.home, ref.uuid))
        faults.checkpoint("before-freeze")
        agent = quiescer_for(self.settings, reg, dom, run.job_id, req.freeze_timeout_s)  # vmbackup agent | qga | none
        snap: SnapshotInFlight | None = None
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with run.phase("freeze"):
                if state_name(dom) == "paused":  # its vCPUs are stopped: the agent cannot answer, nothing is written
                    agent.skip("the VM was paused: snapshot taken without quiescing")
                else:
                    agent.freeze()
                snap = SnapshotInFlight(dom, prep)  # libvirt works from here; the records below are written meanwhile
            try:
                if agent.token:  # durable before the Thaw call: recovery thaws by this token
                    self.intents.step(run.job_id, "frozen", freeze_token=agent.token)
                faults.checkpoint("while-frozen")
                with run.phase("snapshot"):  # its row is written while libvirt works; ends when libvirt's call does
                    overlays = snap.wait()
                    snap_time = _utcnow()
            finally:
                with run.phase("thaw"):
                    q = agent.thaw()
        finally:
            if snap is not None:
                snap.join()  # never leave (to undo) while libvirt may still switch the VM to the overlays
            if gc_was_enabled:
                gc.enable()
        # recorded after the thaw, to keep it out of the freeze window: a crash before this line is recovered
        # from the "frozen" step (thaw by token) plus the overlays found by their job-named files (recovery.py)
        self.intents.step(run.job_id, "snapshotted", overlays=overlays)
        q.created = snap_time
        self.intents.step(run.job_id, "thawed")
        run.detail("freeze_window_ms", q.window_ms)
        run.detail("snapshot_ms", snap.duration_ms if snap is not None else None)
        for key in ("guest_frozen_ms", "freeze_hooks_ms", "thaw_hooks_ms", "freeze_rpc_ms", "thaw_rpc_ms"):
            run.detail(key, getattr(q, key))
        faults.checkpoint("after-snapshot")
        return q

    def _copy(
        self,
        run: JobRun,
        writer: PointWriter,
        ds: list[Disk],
        dom: libvirt.virDomain,
        chain: cbt.ChainPlan,
        compression: str,
    ) -> int:
        """Copy every original disk image into the unpublished point: the changed clusters only where the chain
        allows (qemu-storage-daemon, bitmap of the parent's checkpoint), the whole image otherwise; compressed
        where `compression` asks and it pays (controller/vault/compress.py)."""
        total = 0
        with run.phase("copy"), ioprio.background():  # the guest's own I/O first (datapath/ioprio.py)
            self.intents.step(run.job_id, "copying")
            for d in ds:
                progress = self._copy_progress(run, d.target)
                changes = chain.copies_changes(d.target)
                rec = self._copy_changes(writer, d, chain, progress, compression) if changes else None
                if rec is None:
                    rec = writer.copy_disk(d.target, d.path, progress=progress, fmt=d.format, compression=compression)
                    rec.full_reason = chain.disk_reasons.get(d.target) if chain.incremental else None
                total += rec.stored_bytes
                run.add_bytes(rec.stored_bytes)
            writer.write_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return total

    def _copy_changes(
        self,
        writer: PointWriter,
        d: Disk,
        chain: cbt.ChainPlan,
        progress: Callable[[int, int], None],
        compression: str,
    ) -> DiskRecord | None:
        """The incremental copy of one disk; None (and the reason on the plan) if its bitmap cannot be trusted."""
        assert chain.parent is not None and chain.checkpoint is not None
        workdir = overlay_dir(self.settings.home, chain.parent.vm_uuid)
        workdir.mkdir(mode=0o711, parents=True, exist_ok=True)
        bitmap = chain.checkpoint
        comp = compress.for_incremental(compression, chain.parent.manifest.disk(d.target))

        def write(dst: Path, backing: str) -> int:
            return qsd.backup_changed(d.path, bitmap, dst, backing, workdir, progress, compression=comp, key=writer.key)

        try:
            return writer.add_incremental_disk(d.target, chain.parent, write, d.path, chain.virtual_size(d.target))
        except (BitmapMissing, BitmapInconsistent) as e:
            chain.disk_reasons[d.target] = e.message
            return None

    def _copy_progress(self, run: JobRun, target: str) -> Callable[[int, int], None]:
        """A progress callback that reports, honours cancels, and hosts the mid-copy crash point."""

        def cb(done: int, total: int) -> None:
            if self.progress:
                self.progress(target, done, total)
            if done:
                faults.checkpoint("mid-copy")
            faults.copy_throttle()
            run.check_cancelled()

        return cb

    def _commit_all(self, run: JobRun, dom: libvirt.virDomain, ds: list[Disk]) -> None:
        """Merge this job's overlays back (live, or offline if the guest shut off meanwhile) and delete them."""
        with run.phase("commit"):
            self.intents.step(run.job_id, "committing")
            put_back(dom, {d.target: d.path for d in ds}, run.job_id, block_dir=self._block_dir(dom))
            self.intents.step(run.job_id, "committed")

    def _block_dir(self, dom: libvirt.virDomain) -> Path:
        """Where this VM's block-device overlays go (disksource.overlay_dir)."""
        return overlay_dir(self.settings.home, dom.UUIDString())

    def _undo(
        self, dom: libvirt.virDomain, job_id: str, ds: list[Disk], writer: PointWriter, new_checkpoint: str | None
    ) -> None:
        """Best-effort cleanup after a failure or cancel: VM back on its disks, no partial point, no new checkpoint
        (the parent's still marks every change since the parent, so the chain stays whole)."""
        writer.abort()
        try:  # live, or offline if the guest shut off mid-backup
            put_back(dom, {d.target: d.path for d in ds}, job_id, block_dir=self._block_dir(dom))
        except (VmBackupError, libvirt.libvirtError):
            return  # the intent stays: `vmbackup recover` retries the put-back (the job reports the first error)
        if new_checkpoint:
            with contextlib.suppress(libvirt.libvirtError):
                cbt.delete(dom, new_checkpoint)
        self.intents.done(job_id)

    def _drop_old_checkpoints(self, run: JobRun, dom: libvirt.virDomain, keep: str | None) -> None:
        """After the commit: the checkpoints older than this point's are not needed (a failure only warns)."""
        if keep is None:
            return
        try:
            gone = cbt.delete_ours(dom, keep=keep)
        except libvirt.libvirtError as e:
            run.warn(f"older checkpoints could not be deleted (the next backup retries): {e.get_error_message()}")
            return
        run.detail("checkpoints_deleted", gone)

    def _manifest(
        self, ref: VmRef, req: BackupRequest, q: quiesce.Quiesce, job_id: str, dom: libvirt.virDomain
    ) -> dict[str, Any]:
        """The manifest fields the engine knows (the vault adds the disks it copied)."""
        return {
            "vm": {"uuid": ref.uuid, "name": ref.name, "host": ref.host_uri},
            "created": q.created,
            "consistency": q.consistency,
            "consistency_reason": q.reason,
            "freeze_window_ms": q.window_ms,
            "guest_frozen_ms": q.guest_frozen_ms,
            "freeze_hooks_ms": q.freeze_hooks_ms,
            "thaw_hooks_ms": q.thaw_hooks_ms,
            "agent_version": q.agent_version,
            "quiescer": q.quiescer,
            "controller_version": controller.__version__,
            "policy": req.policy,
            "job_id": job_id,
        }


def _utcnow() -> str:
    """Now, as the manifest writes times."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_local(dom: libvirt.virDomain, ref: VmRef, probe_parent: Path) -> None:
    """Refuse a VM whose libvirt host is another machine: the copy reads its disk paths on this filesystem."""
    if not is_this_host(dom.connect(), probe_parent):
        raise RemoteDataPathUnsupported(
            f"VM {ref.name!r} runs on the libvirt host at {ref.host_uri}, not on this machine; its disks cannot be "
            "read here",
            details={"host_uri": ref.host_uri},
        )

