#!/usr/bin/env bash
# Build a vagrant-libvirt box from the project's lab image, offline: an uncompressed tar of box.img (the qcow2),
# metadata.json and a small Vagrantfile (root login with the lab key, no sudo in the guest).
#
#   build-box.sh IMAGE.qcow2 OUT.box
#
# The image is not copied first (tar follows a symlink to it). Prints the box path and its size.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 IMAGE.qcow2 OUT.box" >&2; exit 2; }
IMAGE=$(readlink -f "$1"); OUT=$2
[ -f "$IMAGE" ] || { echo "build-box: no image at $IMAGE (make lab-image builds it)" >&2; exit 1; }
info=$(qemu-img info --output=json "$IMAGE")
fmt=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])' <<<"$info")
[ "$fmt" = qcow2 ] || { echo "build-box: $IMAGE is $fmt, a libvirt box needs qcow2" >&2; exit 1; }
backing=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename", ""))' <<<"$info")
[ -z "$backing" ] || { echo "build-box: $IMAGE has a backing file ($backing); a box must be standalone" >&2; exit 1; }
gib=$(python3 -c 'import json,sys; print(-(-json.load(sys.stdin)["virtual-size"] // 2**30))' <<<"$info")

work=$(mktemp -d "$(dirname "$OUT")/.box-XXXXXX")
trap 'rm -rf "$work"' EXIT
ln -s "$IMAGE" "$work/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$gib" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'VF'
# Defaults shipped inside the vmbackup lab box: the guest has only root, reachable with the lab key.
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.insert_key = false
  config.ssh.sudo_command = "%c"
  config.vm.guest = :debian
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"   # the image's GRUB boots root=/dev/vda1
  end
end
VF
tar -chf "$work/out.box" -C "$work" metadata.json Vagrantfile box.img
mv -f "$work/out.box" "$OUT"
echo "box $OUT ($(du -m "$OUT" | cut -f1) MiB, virtual ${gib} GiB) from $IMAGE"
