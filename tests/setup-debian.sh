#!/usr/bin/env bash
# Installs what farmd and its tests need on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are left alone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  nix-bin            # the real Nix the farm drives and the tests judge with
  git                # nix's --commit-lock-file runs git
  openssh-server     # a real sshd on loopback: git over ssh, remote builders, the SFTP cache
  openssh-client
  nginx-light        # serves the cache to the real Nix client over HTTP
  fcgiwrap           # nginx runs git-http-backend through it: the fleet repo over HTTPS (tests/git_https.rs)
  sqlite3            # to inspect the history by hand
  dbus-daemon        # a private bus for the logind inhibitor test (tests/inhibit.rs)
  util-linux         # unshare: the journald test's private mount namespace; nsenter
  systemd-container  # systemd-nspawn: tests/systemd_nspawn.rs boots a real systemd in a container
  debootstrap        # builds that container's Debian rootfs once (tests/nspawn/rootfs.sh)
  build-essential pkg-config libssl-dev  # libgit2 / libssh2 / sqlite are built from source by cargo
  ca-certificates
  sshfs rsync python3 time  # tests/bench/publish.sh: the yardsticks, the delay relay, peak RSS
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p /run/sshd
# nginx-light starts the distribution's server on port 80; the tests run their own instances.
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
