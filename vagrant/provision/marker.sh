#!/bin/bash
# Provision the marker VM: marker data whose checksum the e2e compares inside the restored guest.
set -euo pipefail
mkdir -p /srv/marker
head -c 4194304 /dev/urandom > /srv/marker/blob.bin
echo "marker $(hostname) $(date -u +%FT%TZ) $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" > /srv/marker/marker.txt
(cd /srv/marker && sha256sum blob.bin marker.txt > SHA256SUMS)
sync
echo "[provision marker] $(cat /srv/marker/marker.txt); $(wc -l < /srv/marker/SHA256SUMS) files summed"
