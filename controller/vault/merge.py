"""Delete a point that another one depends on by merging it into its child, crash-safe (docs/incremental-design.md).

Point P with child C (C's disks are backed by P's). Each step is durable before the next starts, and a durable
intent file ``VAULT/<vm>/.merge-<P>.json`` (``layout.merge_intent_path``) says what is being done::

    1. write the intent {P, C, P's parent, per disk of C backed by P: state pending}; P is hidden from then on
       (``Vault.list_points`` skips it, ``Vault.get_point`` refuses it)
    2. per disk: ``qemu-img commit -d C/disks/<t>.qcow2`` writes C's clusters into P's file (cost: C's changed
       bytes, not the disk size; re-runnable, C's file is not changed), fsync P's file; state committed
    3. rename P's file over C's (atomic; its backing ``../../<P's parent>/disks/<t>.qcow2`` resolves the same from
       C's directory), fsync both disks/ directories; state renamed
    4. rewrite C's manifest (parent = P's parent, chain_depth - 1, type full when nothing is incremental any more,
       each merged disk's kind/backing/digest/sizes) with the crash-safe SHA256SUMS rewrite (sums.rewrite_manifest)
    5. delete P's directory (Vault.delete_by_id)
    6. delete the intent

:func:`resume_merges` redoes each intent left by a crash from its first step not done: a disk whose P file is gone
and whose C file is backed by P's parent's file (or by nothing, when P was a full) was renamed; C's manifest no
longer naming P as parent means step 4 is done. Disks of C that are not backed by P are never touched.
One merge at a time per VM: merges and resumes hold a flock on the VM's vault directory.
A point a VM runs on (a pin, pins.py: instant restore, boot-check) is neither deleted nor merged: POINT_PINNED;
nor is a protected point or one a protected point is built on (protect.py): POINT_PROTECTED.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.locks import flocked
from controller.vault import chain, digest, keys, layout, pins, protect, qemuimg, sparse, sums
from controller.vault.exceptions import ManifestInvalid, MergeFailed, PathEscape, PointNotFound
from controller.vault.manifest import Manifest, RecoveryPoint, fsync_dir, read_manifest, write_file_durable
from controller.vault.vault import Vault

INTENT_VERSION = 1
PENDING, COMMITTED, RENAMED = "pending", "committed", "renamed"


@dataclass
class DeleteOutcome:
    """What deleting a point did: "deleted" (nothing depended on it), "merged" into its child `into`, or
    "soft-deleted" (recycle.py: kept until purge_after)."""

    vm_uuid: str
    point_id: str
    action: str  # deleted | merged | soft-deleted
    into: str | None = None
    child_type: str | None = None  # the child's type after the merge (full when it has no parent left)
    purge_after: str | None = None  # soft-deleted: when it is purged

    def describe(self) -> str:
        """One line for people: 'deleted point P' or 'merged point P into C (C is now full)'."""
        if self.action == "soft-deleted":
            return (
                f"soft-deleted point {self.point_id}: purged after {self.purge_after} "
                f"(`vmbackup vault undelete {self.point_id}` brings it back until then)"
            )
        if self.action == "merged":
            return f"merged point {self.point_id} into {self.into} (its child; {self.into} is now {self.child_type})"
        return f"deleted point {self.point_id}"

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return asdict(self)


@dataclass
class DiskMerge:
    """One disk of the child that is merged: its progress and P's record of it (what C's record becomes)."""

    state: str = PENDING  # pending | committed | renamed
    backing: str | None = None  # P's disk backing (relative), None when P's disk is a full
    changed_bytes: int | None = None  # P's changed bytes for this disk
    key_id: str | None = None  # P's vault key: the merged file keeps P's LUKS header (None: P's is not encrypted)
    #: the vault key of each file of C's chain for this disk, C's first: qemu-img commit opens the chain with them
    chain_keys: list[str | None] = field(default_factory=list)


@dataclass
class Intent:
    """The durable record of one merge (VAULT/<vm>/.merge-<point>.json)."""

    vm_uuid: str
    point: str
    child: str
    parent: str | None  # P's parent: C's parent after the merge
    disks: dict[str, DiskMerge] = field(default_factory=dict)
    started: str = ""
    version: int = INTENT_VERSION

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_file(cls, path: Path) -> Intent:
        """Read an intent file; MERGE_FAILED if it cannot be read."""
        try:
            d = json.loads(path.read_text())
            if d.get("version") != INTENT_VERSION:
                raise ValueError(f"unknown intent version {d.get('version')!r}")
            disks = {t: DiskMerge(**x) for t, x in d["disks"].items()}
            return cls(**{**d, "disks": disks})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise MergeFailed(f"cannot read the merge intent {path}: {e}", details={"intent": str(path)}) from e


def merge_into_child(vault: Vault, point: RecoveryPoint) -> DeleteOutcome:
    """Merge `point` into the point built on it (chain.child_of) and remove `point`; MERGE_FAILED if it has none."""
    with _vm_lock(vault, point.vm_uuid):
        _resume_vm(vault, point.vm_uuid)
        pins.refuse_if_pinned(vault.root, point.vm_uuid, point.point_id, "merge")
        protect.refuse_if_protected(vault, point.vm_uuid, point.point_id, "merge")
        return _merge(vault, point, _child_or_fail(vault, point))


def delete_or_merge(
    vault: Vault, vm_uuid: str, point_id: str, check: Callable[[], None] | None = None
) -> DeleteOutcome:
    """Remove VAULT/<vm>/<point>: merged into its child when one depends on it, else deleted (Vault.delete_point).

    Interrupted merges of the VM are finished first. A point whose manifest cannot be read is deleted only when
    no point depends on it. check(), when given, runs under the VM lock before anything changes (it may raise).
    """
    with _vm_lock(vault, vm_uuid):
        for done in _resume_vm(vault, vm_uuid):
            if done.point_id == point_id:
                return done
        pdir = layout.point_dir(vault.root, vm_uuid, point_id)
        if not pdir.is_dir() or pdir.is_symlink():
            raise PointNotFound(f"no recovery point {point_id} for VM {vm_uuid}")
        if check is not None:
            check()
        pins.refuse_if_pinned(vault.root, vm_uuid, point_id, "delete")
        protect.refuse_if_protected(vault, vm_uuid, point_id, "delete")
        found = RecoveryPoint(pdir, Manifest(point_id, vm_uuid, "", "", "", "CRASH"))  # ids only
        kid = chain.child_of(vault, found)
        if kid is None:
            vault.delete_by_id(vm_uuid, point_id)
            return DeleteOutcome(vm_uuid, point_id, "deleted")
        try:
            point = RecoveryPoint(pdir, read_manifest(pdir))
        except ManifestInvalid as e:
            raise MergeFailed(
                f"point {point_id} cannot be read ({e.message}) and point {kid.point_id} depends on it: not deleted"
            ) from e
        return _merge(vault, point, _child_or_fail(vault, point))


def resume_merges(vault: Vault, vm_uuid: str | None = None) -> list[DeleteOutcome]:
    """Finish every merge a crash interrupted (one VM's or all), from its first step not done."""
    out: list[DeleteOutcome] = []
    for uuid in [vm_uuid] if vm_uuid is not None else _vm_uuids(vault):
        if layout.vm_dir(vault.root, uuid).is_dir():
            with _vm_lock(vault, uuid):
                out += _resume_vm(vault, uuid)
    return out


def _vm_uuids(vault: Vault) -> list[str]:
    """The uuids of the vault's VM directories (symlinked ones are skipped: nothing is merged through them)."""
    if not vault.root.is_dir():
        return []
    out = []
    for p in sorted(vault.root.iterdir()):
        if layout.UUID_RE.fullmatch(p.name):
            with contextlib.suppress(PathEscape):
                out.append(layout.vm_dir(vault.root, p.name).name)
    return out


def pending_merges(vault: Vault, vm_uuid: str) -> list[Path]:
    """The VM's merge intent files, oldest point first."""
    vd = layout.vm_dir(vault.root, vm_uuid)
    if not vd.is_dir():
        return []
    return sorted(p for p in vd.iterdir() if p.name.startswith(layout.MERGE_PREFIX) and p.name.endswith(".json"))


@contextlib.contextmanager
def chain_lock(vault: Vault, vm_uuid: str) -> Iterator[None]:
    """Hold the VM's chain still while a backup builds on it: no point of the VM is merged or deleted meanwhile
    (a deleted newest point would leave the new incremental without its backing). Finishes interrupted merges
    first. A VM without a vault directory has no chain yet: nothing to hold."""
    if not layout.vm_dir(vault.root, vm_uuid).is_dir():
        yield
        return
    with _vm_lock(vault, vm_uuid):
        _resume_vm(vault, vm_uuid)
        yield


@contextlib.contextmanager
def _vm_lock(vault: Vault, vm_uuid: str) -> Iterator[None]:
    """flock on VAULT/<vm>: one merge (or resume) at a time per VM, across processes."""
    with flocked(layout.vm_dir(vault.root, vm_uuid), directory=True):
        yield


def _resume_vm(vault: Vault, vm_uuid: str) -> list[DeleteOutcome]:
    """Run every intent of one VM to its end (the caller holds the VM lock)."""
    return [_run(vault, Intent.from_file(path)) for path in pending_merges(vault, vm_uuid)]


def _child_or_fail(vault: Vault, point: RecoveryPoint) -> RecoveryPoint:
    """The single point built on `point`; MERGE_FAILED when there is none or (never in a linear chain) several."""
    kids = [p for p in vault.list_points(point.vm_uuid, include_deleted=True) if p.manifest.parent == point.point_id]
    if len(kids) != 1:
        what = "no point depends on it" if not kids else f"{len(kids)} points depend on it (a chain is linear)"
        raise MergeFailed(f"cannot merge point {point.point_id} into a child: {what}")
    return kids[0]


def _plan(vault: Vault, point: RecoveryPoint, child: RecoveryPoint) -> Intent:
    """The intent for merging point into child, after checking every disk of child backed by point (no change)."""
    it = Intent(point.vm_uuid, point.point_id, child.point_id, point.manifest.parent)
    it.started = datetime.now(UTC).isoformat(timespec="seconds")
    need = 0
    for rec in child.manifest.disks:
        if rec.kind != "incremental":
            continue
        mine = chain.backing_name(point.point_id, rec.target)
        prec = point.manifest.disk(rec.target)
        if rec.backing != mine or prec is None or prec.format != "qcow2" or rec.format != "qcow2":
            raise MergeFailed(
                f"disk {rec.target} of point {child.point_id} is backed by {rec.backing!r}, not by a qcow2 disk "
                f"of point {point.point_id} ({mine}): not merged",
                details={"point_id": point.point_id, "child": child.point_id, "target": rec.target},
            )
        cfile, pfile = vault.disk_path(child, rec), vault.disk_path(point, prec)
        if not pfile.is_file():
            raise MergeFailed(f"{pfile} is missing: point {child.point_id} cannot be merged with it (not merged)")
        if _backing_of(cfile) != os.path.normpath(pfile):
            raise MergeFailed(f"{cfile} is not backed by {pfile} as its manifest says: not merged")
        kids = [r.key_id for _, r in reversed(chain.disk_chain(vault, child, rec.target))]
        keys.unlock_check([(cfile, k) for k in kids], f"merging point {point.point_id} into {child.point_id}")
        it.disks[rec.target] = DiskMerge(PENDING, prec.backing, prec.changed_bytes, prec.key_id, kids)
        need += rec.stored_bytes
    vault.check_space(need)
    return it


def _merge(vault: Vault, point: RecoveryPoint, child: RecoveryPoint) -> DeleteOutcome:
    """Plan, write the intent, run it (the caller holds the VM lock)."""
    it = _plan(vault, point, child)
    _write_intent(vault, it)
    return _run(vault, it)


def _run(vault: Vault, it: Intent) -> DeleteOutcome:
    """Every step of the intent not done yet, in order; the intent file goes last."""
    pdir = layout.point_dir(vault.root, it.vm_uuid, it.point)
    cdir = layout.point_dir(vault.root, it.vm_uuid, it.child)
    for target, d in sorted(it.disks.items()):
        if d.state == RENAMED:
            continue
        name = layout.disk_file_name(target, "qcow2")
        pfile, cfile = layout.disk_path(pdir, name), layout.disk_path(cdir, name)
        if not pfile.exists():
            expected = os.path.normpath(cfile.parent / d.backing) if d.backing else None
            if _backing_of(cfile) != expected:
                raise MergeFailed(
                    f"merging point {it.point} into {it.child}: {pfile} is missing and {cfile} is not backed by "
                    f"{expected or 'nothing'}; the intent cannot be finished",
                    details={"point_id": it.point, "child": it.child, "target": target},
                )
        else:
            if d.state == PENDING:
                _commit_disk(cfile, pfile, d.chain_keys)
                d.state = COMMITTED
                _write_intent(vault, it)
            _rename_disk(pfile, cfile)
        d.state = RENAMED
        _write_intent(vault, it)
    child_type = _rewrite_child(vault, it)
    _drop_point(vault, it)
    _drop_intent(vault, it)
    return DeleteOutcome(it.vm_uuid, it.point, "merged", it.child, child_type)


def _write_intent(vault: Vault, it: Intent) -> None:
    """Write (or update) the intent file durably."""
    write_file_durable(layout.merge_intent_path(vault.root, it.vm_uuid, it.point), it.to_bytes())


def _backing_of(path: Path) -> str | None:
    """The normalised absolute path of a qcow2's backing file, None when it has none."""
    backing = qemuimg.info(path, fmt="qcow2").backing_file
    return os.path.normpath(path.parent / backing) if backing else None


def _commit_disk(cfile: Path, pfile: Path, chain_keys: list[str | None]) -> None:
    """`qemu-img commit -d`: the child's clusters into its backing file (the point's), then fsync that file.
    chain_keys: the vault key of each file of the child's chain (child first); encrypted clusters are decrypted
    with the child's key and written with the point's."""
    cmd = [qemuimg.QEMU_IMG, "commit", "-q", *keys.chain_source(cfile, chain_keys), "-d"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, preexec_fn=qemuimg.die_with_parent)
    if p.returncode != 0:
        err = keys.key_error(p.stderr, f"qemu-img commit of {cfile} into {pfile}", chain_keys)
        if err is not None:
            raise err
        raise MergeFailed(
            f"qemu-img commit of {cfile} into {pfile} failed: {p.stderr.strip()}", details={"stderr": p.stderr}
        )
    fd = os.open(pfile, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_disk(pfile: Path, cfile: Path) -> None:
    """The point's file (now point + child) takes the child's place; both directories fsynced."""
    os.rename(pfile, cfile)
    fsync_dir(cfile.parent)
    fsync_dir(pfile.parent)


def _rewrite_child(vault: Vault, it: Intent) -> str:
    """Step 4: the child's manifest names P's parent and describes its new files; returns the child's type."""
    cdir = layout.point_dir(vault.root, it.vm_uuid, it.child)
    with sums.point_lock(cdir):
        m = read_manifest(cdir)
        if m.parent != it.point:
            return m.type  # done before a crash
        for target, d in it.disks.items():
            rec = m.disk(target)
            if rec is None:
                raise MergeFailed(f"point {it.child} no longer lists disk {target}: the merge cannot finish")
            path = layout.disk_path(cdir, rec.file)
            res = sparse.stream(path, algo=digest.algo_of(rec.digest))
            rec.digest, rec.logical_size, rec.stored_bytes = res.digest, res.logical_size, path.stat().st_blocks * 512
            rec.kind, rec.backing = ("incremental", d.backing) if d.backing else ("full", None)
            rec.key_id = d.key_id  # the file is P's: its LUKS header and key
            if rec.format == "qcow2":  # the file is P's now, child clusters committed into it uncompressed
                rec.compression = qemuimg.compression_of(qemuimg.info(path, fmt="qcow2"))
            both = (rec.changed_bytes, d.changed_bytes)
            rec.changed_bytes = sum(x for x in both if x is not None) if d.backing and None not in both else None
        incremental = any(r.kind == "incremental" for r in m.disks)
        m.type = "incremental" if incremental else "full"
        m.parent = it.parent if incremental else None
        m.chain_depth = max(0, m.chain_depth - 1) if m.parent else 0
        sums.rewrite_manifest(cdir, m)
        return m.type


def _drop_point(vault: Vault, it: Intent) -> None:
    """Step 5: P's directory (and the .tmp- leftover of a delete a crash interrupted)."""
    with contextlib.suppress(PointNotFound):
        vault.delete_by_id(it.vm_uuid, it.point)
    tmp = layout.tmp_point_dir(vault.root, it.vm_uuid, it.point)
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp)


def _drop_intent(vault: Vault, it: Intent) -> None:
    """Step 6: the merge is complete."""
    path = layout.merge_intent_path(vault.root, it.vm_uuid, it.point)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)

