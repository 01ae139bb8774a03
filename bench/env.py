"""The benchmark run's environment: a private VMBACKUP_HOME, the shared lab image cache and key, sizes per mode."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import GiB, MiB
from controller import settings as settings_mod
from controller.lab import host, sshkey

IMAGE_CACHE = "/var/tmp/vmbackup-images"


@dataclass
class Plan:
    """Sizes and repetitions of one run (smoke or full); notes say what was scaled down and why."""

    smoke: bool
    freeze_sizes: list[int]
    freeze_reps: int
    copy_bytes: int
    sparse_virtual: int
    sparse_data: int
    copy_reps: int
    backup_reps: int
    restore_reps: int
    scale_ns: list[int]
    scale_reps: int
    notes: list[str] = field(default_factory=list)


def make_plan(smoke: bool, free_bytes: int) -> Plan:
    """The smoke plan (tiny, 1 repetition, one VM) or the full plan, scaled down to the free space."""
    if smoke:
        return Plan(True, [64 * MiB], 1, 64 * MiB, 1 * GiB, 16 * MiB, 1, 1, 0, [100], 1,
                    ["smoke mode: tiny sizes and one repetition; numbers only prove the harness works"])
    p = Plan(False, [1 * GiB, 4 * GiB, 16 * GiB], 5, 1 * GiB, 32 * GiB, 256 * MiB, 3, 3, 3,
             [100, 1000, 10000], 3)
    # a size needs: raw fill + qcow2 + one vault copy, plus 10 GiB headroom for everyone else on the machine
    while p.freeze_sizes and 3 * p.freeze_sizes[-1] + 10 * GiB > free_bytes:
        dropped = p.freeze_sizes.pop()
        p.notes.append(f"freeze size {dropped // GiB} GiB dropped: only {free_bytes / GiB:.0f} GiB free")
    if p.freeze_sizes and p.freeze_sizes[-1] >= 16 * GiB:
        p.notes.append("16 GiB runs 3 repetitions instead of 5 (each backup copies 16 GiB)")
    return p


def setup_home(keep: Path | None = None) -> settings_mod.Settings:
    """Point VMBACKUP_HOME at a private dir (0755 for QEMU), share the lab image cache and the test lab key."""
    home = keep or Path(tempfile.mkdtemp(prefix=f"vmbackup-bench-{os.getpid()}-", dir="/var/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    os.environ["VMBACKUP_HOME"] = str(home)
    os.environ.pop("VMBACKUP_VAULT", None)
    os.environ.setdefault("VMBACKUP_IMAGE_CACHE", IMAGE_CACHE)
    s = settings_mod.load()
    # the image bakes the lab public key in (its cache key includes the fingerprint): use the tests' shared key
    shared = sshkey.key_path(s.image_cache / "test-home" / "lab")
    s.image_cache.mkdir(parents=True, exist_ok=True)
    sshkey.ensure_key(shared)
    mine = sshkey.key_path(s.lab_dir)
    mine.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(mine.parent, 0o700)
    for src, dst in ((shared, mine), (shared.with_name(shared.name + ".pub"), mine.with_name(mine.name + ".pub"))):
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)
    host.ensure_daemons(s.uri)
    return s
