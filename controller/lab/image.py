"""Building the lab guest image: a self-booting (BIOS/GRUB, MBR) Debian 12 qcow2, cached by its recipe hash.

Steps: debootstrap (minbase, from the host's apt mirror) -> configure + slim the tree -> small initramfs ->
partitioned raw disk filled with ``mkfs.ext4 -d`` -> grub-install from a chroot -> qcow2. The build runs in a
temp dir inside the cache and the finished image is renamed into place, so readers never see a partial image.
Loop devices and mounts are released on every path out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.lab import rootfs, sshkey
from controller.lab.diskutil import allocated_bytes, loop_device, mounted, require_free_space, virtual_size
from controller.lab.exceptions import ImageBuildFailed, ImageMissing
from controller.lab.proc import run
from controller.lab.recipe import Recipe, recipe_hash
from controller.locks import flocked
from controller.settings import Settings
from controller.ssh.client import fingerprint

Progress = Callable[[str], None]
GiB = 1 << 30


@dataclass(frozen=True)
class ImageInfo:
    """A cached lab image and what we know about it."""

    path: Path
    recipe_hash: str
    virtual_size: int
    allocated: int
    build_seconds: float | None
    built_now: bool


def image_path(settings: Settings, recipe: Recipe | None = None) -> Path:
    """Where the image for this recipe and this VMBACKUP_HOME's lab key is (or will be) cached."""
    pub = sshkey.ensure_key(sshkey.key_path(settings.lab_dir))
    digest = recipe_hash(recipe or Recipe(), fingerprint(pub))
    return settings.image_cache / f"debian12-lab-{digest}.qcow2"


def info(path: Path, built_now: bool = False) -> ImageInfo:
    """Sizes and build facts of a cached image."""
    side = path.with_suffix(".json")
    facts = json.loads(side.read_text()) if side.exists() else {}
    return ImageInfo(
        path=path,
        recipe_hash=path.stem.rsplit("-", 1)[-1],
        virtual_size=virtual_size(path),
        allocated=allocated_bytes(path),
        build_seconds=facts.get("build_seconds"),
        built_now=built_now,
    )


def cached_image(settings: Settings, recipe: Recipe | None = None) -> ImageInfo:
    """The cached image for the current recipe, or ImageMissing."""
    path = image_path(settings, recipe)
    if not path.exists():
        raise ImageMissing(f"no lab image for the current recipe at {path}")
    return info(path)


def ensure_image(
    settings: Settings, recipe: Recipe | None = None, progress: Progress | None = None
) -> ImageInfo:
    """The cached image for the recipe, building it first if needed (one builder at a time per cache)."""
    recipe = recipe or Recipe()
    path = image_path(settings, recipe)
    if path.exists():
        return info(path)
    settings.image_cache.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.image_cache, 0o755)  # QEMU (libvirt-qemu) reads the base image through overlays
    with _build_lock(settings.image_cache):
        if path.exists():  # another process built it while we waited
            return info(path)
        pub = sshkey.ensure_key(sshkey.key_path(settings.lab_dir))
        build(recipe, pub, path, progress or (lambda _s: None))
    return info(path, built_now=True)


@contextlib.contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    """An exclusive flock on CACHE/.build.lock."""
    with flocked(cache / ".build.lock"):
        yield


def build(recipe: Recipe, pubkey: str, dest: Path, progress: Progress) -> None:
    """Build the image for recipe into dest (atomically); raise ImageBuildFailed on any failing step."""
    require_free_space(dest.parent, 3 * GiB, "building the lab image")
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        tree = work / "rootfs"
        mirror = rootfs.apt_mirror()
        progress(f"debootstrap {recipe.suite} ({len(recipe.packages)} packages) from {mirror}")
        rootfs.debootstrap(recipe, tree, mirror)
        progress("configure the guest (network, journald, fstab, SSH key)")
        rootfs.configure(recipe, tree, pubkey)
        progress("slim the tree and build a small initramfs")
        rootfs.slim(recipe, tree)
        kver = rootfs.make_initramfs(tree)
        progress("make the partitioned disk, fill it, install GRUB")
        raw = work / "disk.raw"
        make_disk(tree, raw, recipe.disk_size_mib)
        progress("convert to qcow2")
        tmp_qcow = work / "image.qcow2"
        run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_qcow)],
            error=ImageBuildFailed,
            what="qemu-img convert",
        )
        os.chmod(tmp_qcow, 0o644)
        facts = {
            "build_seconds": round(time.monotonic() - t0, 1),
            "kernel": kver,
            "mirror": mirror,
            "packages": list(recipe.packages),
            "suite": recipe.suite,
            "built_at": time.time(),
        }
        dest.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
        os.replace(tmp_qcow, dest)
    finally:
        _remove_work(work)


def make_disk(tree: Path, raw: Path, size_mib: int) -> None:
    """A raw MBR disk with one bootable ext4 partition (label root) holding tree, and GRUB in its MBR."""
    with open(raw, "wb") as f:
        f.truncate(size_mib << 20)
    run(
        [
            "parted",
            "-s",
            str(raw),
            "mklabel",
            "msdos",
            "mkpart",
            "primary",
            "ext4",
            "1MiB",
            "100%",
            "set",
            "1",
            "boot",
            "on",
        ],
        error=ImageBuildFailed,
        what="parted",
    )
    with loop_device(raw) as (loop, part):
        run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), part],
            error=ImageBuildFailed,
            what="mkfs.ext4 -d",
        )
        mnt = raw.parent / "mnt"
        mnt.mkdir(exist_ok=True)
        with mounted(part, mnt), rootfs.chroot_mounts(mnt):
            run(
                [
                    "chroot",
                    str(mnt),
                    "grub-install",
                    "--target=i386-pc",
                    "--modules=part_msdos ext2 biosdisk",
                    loop,
                ],
                error=ImageBuildFailed,
                what="grub-install",
            )
            os.sync()


def _remove_work(work: Path) -> None:
    """Unmount anything left under work, then delete it (never while something is still mounted there)."""
    rootfs.unmount_under(work)
    if rootfs.mounts_under(work):
        raise ImageBuildFailed(
            f"could not unmount everything under {work}; left it in place",
            details={"mounts": rootfs.mounts_under(work)},
        )
    shutil.rmtree(work, ignore_errors=True)
