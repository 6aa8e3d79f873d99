#!/bin/sh
# Runs inside the test container after install.sh: a real farm for farmd.service to run.
# - /srv/git/pkgs: a git repo with a flake standing in for nixpkgs (plain derivations, builder
#   /bin/sh), the fleet's input; farmd's `nix flake update` reads it over git+file.
# - /srv/git/fleet.git: the fleet flake's bare remote, reached by farmd over ssh as git@127.0.0.1.
#   Machines: alpha, and beta which sleeps $BETA_SLEEP seconds (time to see the inhibitor lock).
# - /srv/cache: the binary cache, written by farmd over SFTP as cache@127.0.0.1, served by
#   nginx on 127.0.0.1:8080.
# - farmd's ssh key and known_hosts in its home (/var/lib/farmd/.ssh), the cache signing key in
#   /etc/farmd/cache.sk (root only) handed in with LoadCredential= as the README shows.
set -eu
BETA_SLEEP=${BETA_SLEEP:-6}

useradd --system --create-home --home-dir /srv/git --shell /bin/sh git
useradd --system --create-home --home-dir /srv/cache-home --shell /bin/sh cache
install -d -o cache -g cache -m 0755 /srv/cache

# The stand-in for nixpkgs.
install -d -o git -g git /srv/git/pkgs
cat > /srv/git/pkgs/flake.nix <<'NIX'
{
  outputs = { self }: {
    lib.mkPath = { name, refs ? [ ], sleep ? 0 }: derivation {
      inherit name refs;
      system = "x86_64-linux";
      builder = "/bin/sh";
      sleepSeconds = toString sleep;
      args = [ "-c" ''
        PATH=/usr/bin:/bin
        if [ "$sleepSeconds" != 0 ]; then sleep "$sleepSeconds"; fi
        mkdir "$out"
        echo "$name" > "$out/info"
        for r in $refs; do echo "$r" >> "$out/references"; done
      '' ];
    };
  };
}
NIX
# The fleet: two machines sharing a "glibc".
mkdir -p /tmp/fleet
cat > /tmp/fleet/flake.nix <<'NIX'
{
  inputs.pkgs.url = "git+file:///srv/git/pkgs";
  outputs = { self, pkgs }:
    let
      inherit (pkgs.lib) mkPath;
      glibc = mkPath { name = "glibc-2.37"; };
      failing = import ./failing.nix;
      toplevel = name: sleep: mkPath {
        name = "nixos-system-${name}";
        refs = [ glibc (mkPath { name = "etc-${name}"; refs = [ glibc ]; }) ]
          ++ (if builtins.elem name failing then [ (derivation {
            name = "broken"; system = "x86_64-linux"; builder = "/bin/false"; }) ] else [ ]);
        inherit sleep;
      };
    in {
      nixosConfigurations.alpha.config.system.build.toplevel = toplevel "alpha" 0;
      nixosConfigurations.beta.config.system.build.toplevel = toplevel "beta" @BETA_SLEEP@;
    };
}
NIX
sed -i "s/@BETA_SLEEP@/$BETA_SLEEP/" /tmp/fleet/flake.nix
echo '[ ]' > /tmp/fleet/failing.nix
# Nix reads the git+file input with git as the user nix runs as (root here, farmd later), and
# git refuses repositories owned by someone else unless told they are safe. (A real fleet's
# inputs are github: or git+https://, fetched into the user's own cache.)
git config --system safe.directory /srv/git/pkgs
chown -R git:git /srv/git/pkgs
su git -c '
  set -e
  git config --global user.name bed && git config --global user.email bed@localhost
  git config --global init.defaultBranch main
  cd /srv/git/pkgs && git init -q && git add -A && git commit -qm pkgs
  git init -q --bare /srv/git/fleet.git
'
# The fleet is committed with a lock, as real fleets are (locked as root before git sees the
# directory: git refuses repositories of other users); then pkgs moves on, so farmd's
# `nix flake update` has a lock commit to make and push.
nix flake lock path:/tmp/fleet 2>/dev/null
chown -R git:git /tmp/fleet
su git -c '
  set -e
  cd /tmp/fleet && git init -q && git add -A && git commit -qm fleet
  git remote add origin /srv/git/fleet.git && git push -q origin main
  cd /srv/git/pkgs && echo "# moved on" >> flake.nix && git commit -qam "pkgs moves on"
'

# sshd on the container's loopback; farmd's key opens the git and cache accounts.
install -d -o farmd -g farmd -m 0700 /var/lib/farmd /var/lib/farmd/.ssh
su farmd -s /bin/sh -c 'ssh-keygen -q -t ed25519 -N "" -f /var/lib/farmd/.ssh/id_ed25519'
for account in git cache; do
  home=$(getent passwd $account | cut -d: -f6)
  install -d -o $account -g $account -m 0700 "$home/.ssh"
  install -o $account -g $account -m 0600 /var/lib/farmd/.ssh/id_ed25519.pub "$home/.ssh/authorized_keys"
done
systemctl restart ssh
su farmd -s /bin/sh -c 'ssh-keyscan -t ed25519 127.0.0.1 > /var/lib/farmd/.ssh/known_hosts 2>/dev/null'
test -s /var/lib/farmd/.ssh/known_hosts

# nginx serves the cache to fleet machines.
cat > /etc/nginx/sites-enabled/cache <<'NGINX'
server {
  listen 127.0.0.1:8080;
  root /srv/cache;
}
NGINX
systemctl restart nginx

# The signing key: root's, handed to farmd.service as a credential.
farmctl keygen farm-test-1 --secret-key-file /etc/farmd/cache.sk --public-key-file /etc/farmd/cache.pub >/dev/null
chmod 0600 /etc/farmd/cache.sk
mkdir -p /etc/systemd/system/farmd.service.d
cat > /etc/systemd/system/farmd.service.d/credentials.conf <<'UNIT'
[Service]
LoadCredential=cache.sk:/etc/farmd/cache.sk
UNIT

cat > /etc/farmd/farmd.toml <<'TOML'
[repo]
url = "ssh://git@127.0.0.1/srv/git/fleet.git"
ssh_key = "/var/lib/farmd/.ssh/id_ed25519"

[update]
author = "farmd <farmd@nixfarm-ct>"

[build]
jobs = 2

[cache]
url = "sftp://cache@127.0.0.1/srv/cache"
secret_key_files = ["/run/credentials/farmd.service/cache.sk"]
TOML
systemctl daemon-reload
