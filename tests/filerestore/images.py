"""Build small disk images for the file-restore tests: a partitioned disk (ext4 + vfat), a whole-disk xfs, and a
hostile ext4 tree (links out, setuid, device node, fifo)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from tests.vault.helpers import MiB, run

__all__ = ["MiB", "ext4_image", "ext4_tree", "lvm_disk", "partitioned_disk", "sha256", "xfs_disk"]

PART1 = 1 * MiB  #: offset of partition 1 (ext4, 40 MiB)
PART1_SIZE = 40 * MiB
PART2 = 41 * MiB  #: offset of partition 2 (vfat, 16 MiB)
PART2_SIZE = 16 * MiB
DISK_SIZE = 64 * MiB
MTIME = 1_700_000_000  #: mtime given to the test files
RAW_FILE = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  #: /names/<latin-1 name>, not valid UTF-8
RAW_DIR = b"d\xff".decode("utf-8", "surrogateescape")  #: /names/<dir> holding RAW_INNER, ok.txt, link -> RAW_INNER
RAW_INNER = b"in\xfe.bin".decode("utf-8", "surrogateescape")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ext4_tree(root: Path, extra: dict[str, bytes] | None = None) -> None:
    """The guest tree: a minimal Linux root (its fstab mounts the vfat at /boot/efi), data files (one of 10 MiB,
    one owned by 1234:2345), and hostile entries under /evil."""
    (root / "data").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin").mkdir()
    (root / "boot" / "efi").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"point-host\n")
    (root / "etc" / "fstab").write_text("LABEL=root / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat defaults 0 2\n")
    (root / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    (root / "data" / "big.bin").write_bytes(os.urandom(10 * MiB))
    owned = root / "data" / "owned.txt"
    owned.write_bytes(b"mine\n")
    os.chown(owned, 1234, 2345)
    os.chmod(owned, 0o640)
    for name, data in (extra or {}).items():
        (root / "data" / name).write_bytes(data)
    evil = root / "evil"
    evil.mkdir()
    (evil / "shadow").symlink_to("/etc/shadow")
    (evil / "up").symlink_to("../../../../../etc/shadow")
    (evil / "ok").symlink_to("../data/owned.txt")
    (evil / "self").symlink_to(".")
    (evil / "climb").symlink_to("self/../..")  # lexically inside, really the parent of --to
    suid = evil / "suid"
    suid.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(suid, 0o4755)
    sgid = evil / "sgid-dir"
    sgid.mkdir()
    os.chmod(sgid, 0o2775)
    os.mknod(evil / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(evil / "fifo")
    names = root / "names"  # names that are not UTF-8 (surrogate escapes: the files get these exact bytes)
    names.mkdir()
    (names / RAW_FILE).write_bytes(b"latin-1 name\n")
    os.chmod(names / RAW_FILE, 0o600)
    (names / "plain.txt").write_bytes(b"plain\n")
    (names / RAW_DIR).mkdir()
    (names / RAW_DIR / RAW_INNER).write_bytes(b"inner\n")
    (names / RAW_DIR / "ok.txt").write_bytes(b"ok\n")
    (names / RAW_DIR / "link").symlink_to(RAW_INNER)
    (names / "rawlink").symlink_to(RAW_FILE)  # a UTF-8 name whose target is not UTF-8
    for p in [root, *root.rglob("*")]:
        os.utime(p, (MTIME, MTIME), follow_symlinks=False)


def ext4_image(tree: Path, out: Path) -> Path:
    """An ext4 filesystem image of PART1_SIZE holding tree."""
    run("truncate", "-s", str(PART1_SIZE), str(out))
    run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(out))
    return out


def partitioned_disk(tree: Path, work: Path) -> Path:
    """A qcow2: GPT-less MBR disk, p1 ext4 of tree, p2 vfat holding /DOS/NOTE.TXT."""
    raw = work / "disk.raw"
    run("truncate", "-s", str(DISK_SIZE), str(raw))
    table = (
        f"start={PART1 // 512}, size={PART1_SIZE // 512}, type=83\n"
        f"start={PART2 // 512}, size={PART2_SIZE // 512}, type=c\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True, capture_output=True)
    p1 = ext4_image(tree, work / "p1.img")
    p2 = work / "p2.img"
    run("mkfs.vfat", "-n", "EFI", "-C", str(p2), str(PART2_SIZE // 1024))
    note = work / "NOTE.TXT"
    note.write_bytes(b"from vfat\n")
    run("mmd", "-i", str(p2), "::/DOS")
    run("mcopy", "-i", str(p2), str(note), "::/DOS/NOTE.TXT")
    run("dd", f"if={p1}", f"of={raw}", "bs=1M", f"seek={PART1 // MiB}", "conv=notrunc", "status=none")
    run("dd", f"if={p2}", f"of={raw}", "bs=1M", f"seek={PART2 // MiB}", "conv=notrunc", "status=none")
    out = work / "vda.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out


def xfs_disk(src: Path, work: Path) -> Path:
    """A qcow2 whose whole disk is an xfs holding /x/file.bin (a copy of src), made from a protofile."""
    proto = work / "xfs.proto"
    proto.write_text(f"/dev/null\n0 0\nd--755 0 0\nx d--755 0 0\nfile.bin ---644 7 8 {src}\n$\n$\n")
    raw = work / "xfs.raw"
    run("truncate", "-s", str(320 * MiB), str(raw))
    run("mkfs.xfs", "-q", "-f", "-p", str(proto), str(raw))
    out = work / "vdb.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out


def lvm_disk(work: Path, text: bytes) -> Path:
    """A qcow2 holding an LVM volume group vg0 with an ext4 LV root holding /lvm.txt (built inside a libguestfs
    appliance: this host's kernel has no device-mapper)."""
    from controller.filerestore.appliance import import_guestfs

    raw = work / "lvm.raw"
    run("truncate", "-s", str(64 * MiB), str(raw))
    g = import_guestfs().GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(str(raw), format="raw")
    g.launch()
    try:
        g.part_disk("/dev/sda", "mbr")
        g.pvcreate("/dev/sda1")
        g.vgcreate("vg0", ["/dev/sda1"])
        g.lvcreate("root", "vg0", 32)
        g.mkfs("ext4", "/dev/vg0/root")
        g.mount("/dev/vg0/root", "/")
        g.write("/lvm.txt", text)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()
    out = work / "vdc.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out
