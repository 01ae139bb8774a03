#!/usr/bin/env bash
# Create a network namespace + private mount namespace holding a private virtlogd/libvirtd, for the Vagrant e2e.
#
# Everything Vagrant needs (the libvirt management network: bridge, dnsmasq, 192.168.121.0/24) lives inside this
# netns, so the host itself never gets or talks to a private address. The private mount namespace gives the
# daemons their own /etc/libvirt, /var/lib/libvirt (storage pool), /var/log/libvirt, /var/cache/libvirt and a tmpfs
# on /run/libvirt, all under $E2E_STATE/lv; the host's libvirtd and its domains are untouched.
#
# Writes $E2E_STATE/uri (the private libvirtd's URI: a non-default socket), $E2E_STATE/holder.pid (the process whose namespaces to nsenter) and $E2E_STATE/daemons.pid.
# Run commands inside with:  nsenter -t "$(cat $E2E_STATE/holder.pid)" -m -n CMD
# Undo with ns-down.sh (also safe after a partial ns-up). Needs root.
set -euo pipefail

E2E_STATE=${E2E_STATE:-/var/tmp/vmbackup-e2e/run}
NS=${E2E_NETNS:-vmbackup-e2e}
B=$E2E_STATE/lv
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[ns-up %s] %s\n' "$(date +%T)" "$*"; }

[ "$(id -u)" = 0 ] || { echo "ns-up: must run as root (netns + mount namespaces)" >&2; exit 1; }
if ip netns list | grep -qw "$NS"; then
  echo "ns-up: netns $NS already exists: run vagrant/ns-down.sh first (a previous run did not clean up)" >&2
  exit 1
fi
t0=$(date +%s.%N)
mkdir -p "$E2E_STATE"
rm -rf "$B"
mkdir -p "$B"/varlib "$B"/log/qemu "$B"/cache
# private copy of the config, without the host's domain, network and autostart definitions
cp -a /etc/libvirt "$B"/etc
rm -f "$B"/etc/qemu/*.xml "$B"/etc/qemu/autostart/* "$B"/etc/qemu/networks/*.xml "$B"/etc/qemu/networks/autostart/*
rm -f "$B"/etc/storage/*.xml "$B"/etc/storage/autostart/*
# a non-default socket: clients must use the URI in $E2E_STATE/uri (qemu:///system reaches nothing in there)
SOCKDIR=/run/libvirt/e2e
printf '\n# vmbackup e2e: private daemon, non-default socket\nunix_sock_dir = "%s"\n' "$SOCKDIR" >> "$B"/etc/libvirtd.conf
URI="qemu+unix:///system?socket=$SOCKDIR/libvirt-sock"
# the directory skeleton of /var/lib/libvirt (owners and modes matter to QEMU/dnsmasq), no files
(cd /var/lib/libvirt && find . -maxdepth 2 -type d ! -name 'domain-*') | while read -r d; do
  mkdir -p "$B/varlib/$d"
  chown --reference="/var/lib/libvirt/$d" "$B/varlib/$d"
  chmod --reference="/var/lib/libvirt/$d" "$B/varlib/$d"
done
chmod 755 "$E2E_STATE" "$B" "$B/varlib"

ip netns add "$NS"
ip -n "$NS" link set lo up
# the holder: joins the netns, gets a private mount namespace, records its own pid, then sleeps forever
setsid ip netns exec "$NS" unshare -m --propagation private \
  sh -c "echo \$\$ > '$E2E_STATE/holder.pid'; exec sleep infinity" </dev/null >/dev/null 2>&1 &
for _ in $(seq 50); do [ -s "$E2E_STATE/holder.pid" ] && break; sleep 0.1; done
HOLDER=$(cat "$E2E_STATE/holder.pid")
[ "$(readlink /proc/"$HOLDER"/ns/net)" = "$(ip netns exec "$NS" readlink /proc/self/ns/net)" ] \
  || { echo "ns-up: holder $HOLDER is not in netns $NS" >&2; exit 1; }
N=(nsenter -t "$HOLDER" -m -n)
"${N[@]}" mount -t tmpfs -o mode=755 tmpfs /run/libvirt
"${N[@]}" mount --bind "$B"/etc /etc/libvirt
"${N[@]}" mount --bind "$B"/varlib /var/lib/libvirt
"${N[@]}" mount --bind "$B"/log /var/log/libvirt
"${N[@]}" mount --bind "$B"/cache /var/cache/libvirt
"${N[@]}" mkdir -p "$SOCKDIR"
"${N[@]}" virtlogd -d -p /run/libvirt/e2e-virtlogd.pid
"${N[@]}" libvirtd -d -p /run/libvirt/e2e-libvirtd.pid
for _ in $(seq 120); do
  "${N[@]}" virsh -c "$URI" uri >/dev/null 2>&1 && break
  sleep 0.5
done
"${N[@]}" virsh -c "$URI" uri >/dev/null || { echo "ns-up: private libvirtd did not answer in 60 s" >&2; exit 1; }
echo "$URI" > "$E2E_STATE/uri"
echo "$("${N[@]}" cat /run/libvirt/e2e-virtlogd.pid) $("${N[@]}" cat /run/libvirt/e2e-libvirtd.pid)" \
  > "$E2E_STATE/daemons.pid"
log "netns $NS, holder $HOLDER, virtlogd+libvirtd $(cat "$E2E_STATE/daemons.pid"), up in $(since "$t0") s"
log "libvirt URI (inside the namespaces only): $URI"
log "inside: $("${N[@]}" ip -br addr | tr '\n' ';')"
