#!/bin/sh
# Runs inside the test container: installs farmd the way README.md's "Debian, Ubuntu, Fedora"
# section tells a user to, from what the test bound read-only into /opt/nixfarm
# (bin/ = target/debug, systemd/ = the repository's unit files). Then a minimal config.
set -eu
src=/opt/nixfarm

# The binaries and the units, unchanged.
install -m 0755 "$src/bin/farmd" "$src/bin/farmctl" /usr/local/bin/
install -m 0644 "$src/systemd/farmd.service" "$src/systemd/farmd.socket" \
  "$src/systemd/farmd-nightly.service" "$src/systemd/farmd-nightly.timer" /etc/systemd/system/

# The user, from the sysusers.d file; on Debian it joins nix-users to reach the Nix daemon.
install -D -m 0644 "$src/systemd/farmd.sysusers" /etc/sysusers.d/farmd.conf
systemd-sysusers
usermod -a -G nix-users farmd

# Nix: flakes on; no cache.nixos.org (the container has no network); Debian's nix.conf already
# has sandbox = false. The daemon comes from Debian's nix-setup-systemd (nix-daemon.socket).
cat >> /etc/nix/nix.conf <<'NIX'
experimental-features = nix-command flakes
substituters =
NIX

mkdir -p /etc/farmd
cat > /etc/farmd/farmd.toml <<'TOML'
[repo]
url = "file:///srv/git/none.git"
TOML

systemctl daemon-reload
systemctl enable --now nix-daemon.socket
systemctl enable farmd.socket farmd.service farmd-nightly.timer
