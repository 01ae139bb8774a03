"""Making the guest's root tree: debootstrap, configuration, slimming, initramfs; and chroot mounts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from controller.lab.exceptions import ImageBuildFailed
from controller.lab.proc import run
from controller.lab.recipe import Recipe

SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def apt_mirror(suite: str = "bookworm", sources: tuple[Path, ...] = SOURCES) -> str:
    """The first Debian mirror URI the host's apt sources use for `suite` (one-line or deb822 format)."""
    files: list[Path] = []
    for s in sources:
        if s.is_dir():
            files += sorted(p for p in s.iterdir() if p.suffix in (".list", ".sources"))
        elif s.exists():
            files.append(s)
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    return str(fields["URIs"].split()[0])
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(3) == suite:
                    return m.group(2)
    raise ImageBuildFailed(
        f"no apt source for {suite} in /etc/apt/sources.list*",
        remediation=f"Add a Debian {suite} mirror to /etc/apt/sources.list.d/.",
    )


def debootstrap(recipe: Recipe, tree: Path, mirror: str) -> None:
    """debootstrap the recipe's suite and packages into tree."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    run(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            "--include=" + ",".join(recipe.packages),
            recipe.suite,
            str(tree),
            mirror,
        ],
        error=ImageBuildFailed,
        what="debootstrap",
        env=env,
    )


def kernel_version(tree: Path) -> str:
    """The one kernel version installed in tree."""
    versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir())
    if not versions:
        raise ImageBuildFailed("no kernel modules in the tree: linux-image-amd64 did not install")
    return versions[-1]


def configure(recipe: Recipe, tree: Path, pubkey: str) -> None:
    """Write the recipe's files, the SSH key, mount points and unit states into tree."""
    for rel, content in recipe.files.items():
        p = tree / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        os.chmod(p, 0o755 if "/sbin/" in rel else 0o644)
    ssh = tree / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    (ssh / "authorized_keys").write_text(pubkey + "\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    for line in recipe.files.get("/etc/fstab", "").splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] != "/":
            (tree / fields[1].lstrip("/")).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tree / "var" / "log" / "journal", ignore_errors=True)
    run(
        ["systemctl", f"--root={tree}", "enable", *recipe.enable_units],
        error=ImageBuildFailed,
        what="systemctl enable",
    )
    for unit in recipe.disable_units:
        with contextlib.suppress(ImageBuildFailed):
            run(
                ["systemctl", f"--root={tree}", "disable", unit],
                error=ImageBuildFailed,
                what="systemctl disable",
            )


def slim(recipe: Recipe, tree: Path) -> None:
    """Drop apt caches, docs, man pages, locales and kernel modules a virtio guest never loads."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
    ):
        for p in tree.glob(pattern):
            _remove(p)
    locale = tree / "usr" / "share" / "locale"
    if locale.is_dir():
        for p in locale.iterdir():
            if p.name != "locale.alias":
                _remove(p)
    kdir = tree / "usr" / "lib" / "modules" / kernel_version(tree) / "kernel"
    for rel in recipe.drop_modules:
        _remove(kdir / rel)
    scsi = kdir / "drivers" / "scsi"
    if scsi.is_dir():
        for p in scsi.iterdir():
            if p.is_dir():
                _remove(p)


def make_initramfs(tree: Path) -> str:
    """depmod + update-initramfs (MODULES=list) inside tree; return the kernel version."""
    kver = kernel_version(tree)
    run(["chroot", str(tree), "depmod", "-a", kver], error=ImageBuildFailed, what="depmod")
    run(
        ["chroot", str(tree), "update-initramfs", "-u", "-k", kver],
        error=ImageBuildFailed,
        what="update-initramfs",
    )
    return kver


def _remove(p: Path) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/dev, /dev/pts, /proc and /sys mounted inside root for the block; always unmounted."""
    plan = [
        (["--bind", "/dev"], "dev"),
        (["--bind", "/dev/pts"], "dev/pts"),
        (["-t", "proc", "proc"], "proc"),
        (["-t", "sysfs", "sys"], "sys"),
    ]
    done: list[Path] = []
    try:
        for args, rel in plan:
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, str(target)], error=ImageBuildFailed, what=f"mount {rel}")
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            with contextlib.suppress(ImageBuildFailed):
                run(["umount", "-l", str(target)], error=ImageBuildFailed, what=f"umount {target}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (from /proc/self/mounts), deepest first."""
    base = str(path.resolve())
    out: list[str] = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mp = line.split()[1].encode().decode("unicode_escape")
        if mp == base or mp.startswith(base + "/"):
            out.append(mp)
    return sorted(out, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    """Best-effort lazy unmount of everything mounted at or below path."""
    for mp in mounts_under(path):
        with contextlib.suppress(ImageBuildFailed):
            run(["umount", "-l", mp], error=ImageBuildFailed, what=f"umount {mp}")
