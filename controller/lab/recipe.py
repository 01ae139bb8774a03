"""What the lab guest image is made of: packages, config files and commands; and the hash that names it.

Everything that changes the built image belongs in :class:`Recipe`, so the cache key (:func:`recipe_hash`)
changes with it and a stale image is never reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

#: Bump when the build procedure (image.py) changes in a way the recipe fields do not show.
FORMAT_VERSION = 1

PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "util-linux",
    "e2fsprogs",
    "iproute2",
    "kmod",
    "initramfs-tools",
    "grub-pc",
    "procps",
    "qemu-guest-agent",
    "sqlite3",
)

DATA_DISKS = 8  # fstab has LABEL=data1..data8 -> /data1../data8

_FSTAB = "/dev/vda1  /  ext4  errors=remount-ro  0 1\n" + "".join(
    f"LABEL=data{i}  /data{i}  ext4  defaults,nofail,x-systemd.device-timeout=90s  0 2\n"
    for i in range(1, DATA_DISKS + 1)
)

_NETWORK = """[Match]
Name=en* eth*
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

# Grow the root partition and its ext4 to the end of vda when the overlay was created bigger than the image.
_GROWROOT = """#!/bin/sh
set -eu
disk=/sys/block/vda
[ -e "$disk/vda1" ] || exit 0
total=$(cat $disk/size); start=$(cat $disk/vda1/start); size=$(cat $disk/vda1/size)
[ $((start + size + 2048)) -lt "$total" ] || exit 0
echo ', +' | sfdisk --force --no-reread --no-tell-kernel -N 1 /dev/vda >/dev/null 2>&1
partx -u -n 1 /dev/vda
resize2fs /dev/vda1 >/dev/null 2>&1
"""

_GROWROOT_UNIT = """[Unit]
Description=Grow the root filesystem to the disk size (vmbackup lab)
After=local-fs.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-growroot
[Install]
WantedBy=multi-user.target
"""

_GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
menuentry 'debian' {
  insmod part_msdos
  insmod ext2
  search --no-floppy --label --set=root root
  linux /vmlinuz root=/dev/vda1 ro console=ttyS0,115200 net.ifnames=1 quiet
  initrd /initrd.img
}
"""

#: Files written into the rootfs (path -> content); `/root/.ssh/authorized_keys` is added from the key.
FILES: dict[str, str] = {
    "/etc/hostname": "lab-guest\n",
    "/etc/hosts": "127.0.0.1 localhost\n127.0.1.1 lab-guest\n",
    "/etc/resolv.conf": "",  # debootstrap copies the host's resolver; the guest must not use it
    "/etc/fstab": _FSTAB,
    "/etc/ssh/sshd_config.d/lab.conf": "UseDNS no\nPasswordAuthentication no\n",
    "/etc/systemd/network/20-wired.network": _NETWORK,
    # a persistent journal on / blocks while / is frozen: keep it in RAM
    "/etc/systemd/journald.conf.d/volatile.conf": "[Journal]\nStorage=volatile\n",
    "/etc/initramfs-tools/conf.d/lab.conf": "MODULES=list\n",
    "/etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n",
    "/etc/dpkg/dpkg.cfg.d/lab-nodoc": "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\n",
    "/usr/local/sbin/lab-growroot": _GROWROOT,
    "/etc/systemd/system/lab-growroot.service": _GROWROOT_UNIT,
    "/boot/grub/grub.cfg": _GRUB_CFG,
}

ENABLE_UNITS: tuple[str, ...] = ("systemd-networkd.service", "lab-growroot.service")
DISABLE_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "apt-daily-upgrade.timer",
    "apt-daily.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
    "networking.service",
)

#: Kernel module subtrees (under lib/modules/KVER/kernel) a virtio guest never needs.
DROP_MODULES: tuple[str, ...] = (
    tuple(
        f"drivers/{d}"
        for d in [
            "gpu",
            "media",
            "infiniband",
            "iio",
            "usb",
            "hwmon",
            "bluetooth",
            "staging",
            "isdn",
            "mtd",
            "nfc",
            "hid",
            "platform",
            "power",
            "leds",
            "mmc",
            "w1",
            "thunderbolt",
            "misc",
            "comedi",
            "fpga",
            "spi",
            "i2c",
            "ata",
            "target",
            "net/wireless",
            "net/ethernet",
            "net/can",
            "net/usb",
            "input/touchscreen",
            "input/joystick",
            "input/misc",
        ]
    )
    + tuple(f"net/{d}" for d in ["bluetooth", "wireless", "mac80211", "sunrpc", "ceph", "rxrpc", "nfc"])
    + tuple(
        f"fs/{d}"
        for d in [
            "nfs",
            "nfsd",
            "ceph",
            "cifs",
            "smbfs",
            "ocfs2",
            "gfs2",
            "xfs",
            "btrfs",
            "f2fs",
            "ntfs3",
            "ubifs",
            "jffs2",
            "orangefs",
            "afs",
            "dlm",
            "nilfs2",
            "reiserfs",
            "jfs",
            "udf",
            "coda",
            "9p",
        ]
    )
    + ("sound",)
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the built image's content."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    files: dict[str, str] = field(default_factory=lambda: dict(FILES))
    enable_units: tuple[str, ...] = ENABLE_UNITS
    disable_units: tuple[str, ...] = DISABLE_UNITS
    drop_modules: tuple[str, ...] = DROP_MODULES
    disk_size_mib: int = 2048
    format_version: int = FORMAT_VERSION


def recipe_hash(recipe: Recipe, pubkey_fingerprint: str) -> str:
    """A stable hex digest (16 chars) of the recipe and the baked-in SSH key's fingerprint."""
    doc = asdict(recipe)
    doc["pubkey_fingerprint"] = pubkey_fingerprint
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
