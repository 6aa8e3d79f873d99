#!/usr/bin/env bash
# The README's demo: sets up a fresh Debian 12 machine (as root), creates a demo fleet flake
# with a local git remote and a local SFTP binary cache (a throwaway sshd on 127.0.0.1), runs
# one complete farm run with `farmd --once`, and proves the cache with the real Nix client:
# it substitutes a machine's whole closure into an empty store with signatures required.
# Everything lives under $NIXFARM_DEMO (default /tmp/nixfarm-demo); run it again to see an
# incremental run (bump the input first with: tests/demo/demo.sh bump).
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
demo=${NIXFARM_DEMO:-/tmp/nixfarm-demo}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nbuild-users-group ='
git_id=(-c user.name=demo -c user.email=demo@localhost)

if [[ ${1:-} == bump ]]; then
  cd "$demo/pkgs"
  echo $(( $(cat version.nix) + 1 )) > version.nix
  git "${git_id[@]}" commit -qam "bump version"
  echo "bumped the demo's pkgs input to version $(cat version.nix); run tests/demo/demo.sh again"
  exit 0
fi

bash "$repo_root/tests/setup-debian.sh"
(cd "$repo_root" && cargo build --locked --bins --quiet)
bin="$repo_root/target/debug"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ ! -d $demo/fleet.git ]]; then
  echo "==> creating the demo fleet in $demo"
  mkdir -p "$demo"
  cp -r "$repo_root/tests/demo/pkgs" "$demo/pkgs"
  (cd "$demo/pkgs" && git init -q -b main && git add . && git "${git_id[@]}" commit -qm "demo pkgs")
  work=$(mktemp -d)
  cp "$repo_root/tests/demo/fleet/flake.nix" "$work/"
  sed -i "s|@PKGS_URL@|git+file://$demo/pkgs|" "$work/flake.nix"
  (cd "$work" && git init -q -b main && git add . && git "${git_id[@]}" commit -qm "demo fleet" \
    && nix flake lock 2>/dev/null && git add flake.lock && git "${git_id[@]}" commit -qm "lock" \
    && git clone -q --bare . "$demo/fleet.git")
  rm -rf "$work"
  # Move the input on so the first run has a lock update to commit and push.
  (cd "$demo/pkgs" && echo 2 > version.nix && git "${git_id[@]}" commit -qam "version 2")

  echo "==> a signing key for the cache (farmctl keygen) and an SSH identity for the cache host"
  mkdir -p "$demo/keys" "$demo/sshd" "$demo/cache"
  "$bin/farmctl" keygen demo-cache-1 --secret-key-file "$demo/keys/cache.sk" \
    --public-key-file "$demo/keys/cache.pk" >/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$demo/keys/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -f "$demo/sshd/host_key"
  cp "$demo/keys/id_ed25519.pub" "$demo/sshd/authorized_keys"
fi

# The cache host: an sshd on a free loopback port that serves only SFTP (nothing else is
# needed on a cache host: sshd and, for the fleet, a web server).
port=$(free_port)
mkdir -p /run/sshd
cat > "$demo/sshd/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $port
HostKey $demo/sshd/host_key
AuthorizedKeysFile $demo/sshd/authorized_keys
PidFile $demo/sshd/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -f "$demo/sshd/sshd_config" -E "$demo/sshd/log"
trap 'kill $(cat "$demo/sshd/sshd.pid") 2>/dev/null; [[ -n ${http_pid:-} ]] && kill $http_pid 2>/dev/null' EXIT
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$demo/sshd/host_key.pub")" > "$demo/keys/known_hosts"

cat > "$demo/farmd.toml" <<TOML
# The demo farm (see config/farmd.example.toml for every key).
[repo]
url = "$demo/fleet.git"
branch = "main"

[update]
author = "farmd demo <farmd@localhost>"
push = "built"

[build]
jobs = 2

[cache]
url = "sftp://root@127.0.0.1:$port$demo/cache"
secret_key_files = ["$demo/keys/cache.sk"]
ssh_identity = "$demo/keys/id_ed25519"
ssh_known_hosts = "$demo/keys/known_hosts"

[state]
dir = "$demo/state"

[control]
socket = "$demo/control.sock"
TOML

echo "==> farmd --once --config $demo/farmd.toml"
set +e
"$bin/farmd" --once --config "$demo/farmd.toml"
code=$?
set -e
echo "==> farmctl history (exit code of the run: $code)"
"$bin/farmctl" --config "$demo/farmd.toml" history
echo
echo "The lock commit farmd pushed: $(git -C "$demo/fleet.git" log -1 --format='%h %s (%an)' main)"

echo "==> the real Nix client substitutes pi3 from the cache (over HTTP, signatures required)"
http_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$demo/cache" "$http_port" >/dev/null 2>&1 &
http_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break; sleep 0.1; done
toplevel=$(readlink "$demo/state/gcroots/nixos-pi3")
client=$(mktemp -d)
if ! out=$(nix-store --store "$client" -r "$toplevel" --max-jobs 0 \
  --option substituters "http://127.0.0.1:$http_port" \
  --option trusted-public-keys "$(cat "$demo/keys/cache.pk")" \
  --option require-sigs true 2>&1); then
  echo "$out"; echo "error: the Nix client could not substitute from the cache" >&2; exit 2
fi
echo "substituted $(nix-store --store "$client" -qR "$toplevel" | wc -l) paths of $toplevel into an empty store"
rm -rf "$client"
echo
echo "Cache: $demo/cache   Logs: $demo/state/logs   History: farmctl --config $demo/farmd.toml show 1"
exit $code
