#!/usr/bin/env bash
# Prints the path of a Debian bookworm root file system for `systemd-nspawn -b`, building it
# with debootstrap the first time (45–80 s) and reusing it afterwards.
#
# The rootfs is cached under $NIXFARM_NSPAWN_CACHE (default /var/cache/nixfarm-nspawn) in a
# directory named after a hash of the recipe below, so a changed package list builds a new one
# and every later test run on the same machine reuses it. Containers boot it with
# --volatile=overlay and never write to it. Concurrent callers wait on a lock; a half-built
# rootfs is never published (built under a temporary name, renamed when complete).
#
# Runs as root (debootstrap and chroot need it). Usage: tests/nspawn/rootfs.sh
set -euo pipefail

suite=bookworm
mirror=${NIXFARM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the tests need inside, beyond minbase: a booting systemd with logind and D-Bus
# (systemd-inhibit), polkit (logind asks it whether the unprivileged farmd may take an
# inhibitor lock), Debian's Nix with its daemon units (nix-setup-systemd), git (nix's
# --commit-lock-file), ssh + sshd (the SFTP cache on loopback), nginx (serving the cache).
packages=(
  systemd systemd-sysv dbus libpam-systemd polkitd
  nix-bin nix-setup-systemd git ca-certificates
  libdbi-perl  # provides perl-dbdabi-94 for nix-bin's libdbd-sqlite3-perl; debootstrap
               # does not resolve virtual packages
  openssh-server openssh-client nginx-light
  procps
)
# Bump when the steps after debootstrap change.
recipe_version=1

cache=${NIXFARM_NSPAWN_CACHE:-/var/cache/nixfarm-nspawn}
key=$(printf '%s\n' "$suite" "$mirror" "$recipe_version" "${packages[@]}" | sha256sum | cut -c1-16)
rootfs=$cache/$suite-$key

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -e $rootfs/.complete ]]; then
  echo "$rootfs"
  exit 0
fi

command -v debootstrap >/dev/null || {
  echo "error: debootstrap not found; run tests/setup-debian.sh (apt-get install debootstrap systemd-container)" >&2
  exit 1
}
tmp=$cache/.building-$suite-$key
rm -rf "$tmp"
include=$(IFS=,; echo "${packages[*]}")
echo "nixfarm: debootstrapping $suite into $tmp (once per package list)" >&2
start=$SECONDS
if ! debootstrap --variant=minbase --include="$include" "$suite" "$tmp" "$mirror" >"$cache/.debootstrap.log" 2>&1; then
  tail -n 30 "$cache/.debootstrap.log" >&2
  echo "error: debootstrap failed; the whole log is $cache/.debootstrap.log" >&2
  exit 1
fi
# The container has no console login to offer and no network to configure.
rm -f "$tmp/etc/systemd/system/getty.target.wants/"* 
ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$tmp/etc/systemd/system/systemd-networkd-wait-online.service"
# Not a real machine: no hardware clock, no time sync, no apt timers waking up mid-test.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
done
echo nixfarm-ct > "$tmp/etc/hostname"
chroot "$tmp" apt-get clean
rm -rf "$tmp/var/lib/apt/lists/"*
touch "$tmp/.complete"
rm -rf "$rootfs"
mv "$tmp" "$rootfs"
echo "nixfarm: debootstrap took $((SECONDS - start)) s" >&2
echo "$rootfs"
