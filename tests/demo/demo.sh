#!/usr/bin/env bash
# The README's demo: sets up a fresh Debian 12 machine (as root), creates a demo fleet flake
# with a local git remote, and runs one complete farm run with `farmd --once`.
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

[state]
dir = "$demo/state"
TOML
fi

echo "==> farmd --once --config $demo/farmd.toml"
set +e
"$bin/farmd" --once --config "$demo/farmd.toml"
code=$?
set -e
echo "==> farmctl history (exit code of the run: $code)"
"$bin/farmctl" --config "$demo/farmd.toml" history
echo
echo "The lock commit farmd pushed: $(git -C "$demo/fleet.git" log -1 --format='%h %s (%an)' main)"
echo "Logs: $demo/state/logs   GC roots: $demo/state/gcroots   History: farmctl --config $demo/farmd.toml show 1"
exit $code
