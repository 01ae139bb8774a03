#!/usr/bin/env bash
# Prepare this machine as a vmbackup lab host, idempotently:
#   1. Debian packages for libvirt/QEMU, image building and building libvirt-python;
#   2. virtlogd and libvirtd running (works with or without systemd as PID 1).
# Safe to run again and again; prints what it did. Needs root.
set -euo pipefail

PKGS=(
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  debootstrap parted e2fsprogs xfsprogs util-linux kmod grub-pc-bin grub2-common
  pkg-config gcc python3-dev python3-venv openssh-client dnsmasq-base iptables
  vagrant vagrant-libvirt   # the Vagrant end-to-end test (make e2e)
  lvm2                      # LVM volumes as block-device disks (tests/backup/test_block_volume_disks.py)
  virtnbdbackup             # a contender in make bench
  libnbd-bin python3-libnbd # dirty-bitmap reads over NBD (bench/cbt_paths.py; the venv loads Debian's nbd module)
  python3-guestfs libguestfs-tools linux-image-amd64  # vmbackup files: the libguestfs appliance (and its kernel)
  chromium chromium-driver  # the web dashboard's headless-browser test (tests/web/, selenium)
)

log() { printf '[host-setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "host-setup: must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  log "packages already installed"
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ -d /run/systemd/system ]; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service >/dev/null 2>&1 || true
fi
if ! running /run/virtlogd.pid && ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  virtlogd -d
fi
if ! running /run/libvirtd.pid && ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 60); do
  virsh -c qemu:///system uri >/dev/null 2>&1 && break
  sleep 0.5
done
virsh -c qemu:///system uri >/dev/null 2>&1 || { echo "host-setup: libvirtd did not answer within 30 s" >&2; exit 1; }
log "libvirtd is answering on qemu:///system"
