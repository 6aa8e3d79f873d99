#!/usr/bin/env bash
# The publish benchmark (BENCHMARKS.md): farmd's publisher (`farmctl publish`) over SFTP vs
# `nix copy --to file://` into a local directory and onto an sshfs mount, vs `rsync -a` of a
# ready-made cache, on loopback and at ~20 ms RTT, in one run on one generated fleet.
#
#   tests/bench/publish.sh            # everything, ~30-40 min on 2 cores
#
# Environment:
#   BENCH_DIR   work directory (default: a new /tmp/nixfarm-bench.XXXX; needs ~4 GB)
#   REPS        repetitions of each measurement, the median is reported (default 3)
#   SLOW_REPS   repetitions of the sshfs full publish at 20 ms RTT (~200 s each; default 1)
#   XZ_SUBSET   share of the fleet's NAR bytes the xz comparison uses (default 0.25; 1 = all)
#   DELAY_MS    one-way delay of the WAN relay (default 10, i.e. 20 ms RTT)
#   ONLY        space-separated sections to run: lo incr xz wan many rss floor (default: all)
#   KEEP=1      keep the work directory and the generated store paths
#   FARMCTL     a farmctl binary to use (default: cargo build --release, target/release/farmctl)
#
# Results: $BENCH_DIR/results.tsv (every sample) and $BENCH_DIR/results.md (the table).
# Needs: nix, sshd + ssh, sshfs (fuse3), rsync, python3, /usr/bin/time (tests/setup-debian.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
REPS=${REPS:-3}
SLOW_REPS=${SLOW_REPS:-1}
XZ_SUBSET=${XZ_SUBSET:-0.25}
export DELAY_MS=${DELAY_MS:-10}
ONLY=${ONLY:-lo incr xz wan many rss floor}
B=${BENCH_DIR:-$(mktemp -d /tmp/nixfarm-bench.XXXXXX)}
mkdir -p "$B"
B=$(cd "$B" && pwd)
salt="bench-$(date +%s)-$$-$RANDOM"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

for tool in nix nix-store /usr/sbin/sshd ssh ssh-keygen sshfs fusermount3 rsync python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (run tests/setup-debian.sh)" >&2; exit 1; }
done

export NIX_CONFIG='experimental-features = nix-command flakes
sandbox = false
substituters =
build-users-group =
fsync-metadata = false'
# Nix's narinfo disk cache and other per-user state stay inside the bench dir.
export XDG_CACHE_HOME=$B/xdg-cache
mkdir -p "$XDG_CACHE_HOME" "$B/local" "$B/gcroots" "$B/bin" "$B/mnt-lo" "$B/mnt-wan"

# The cache host's account, as in the README (`sftp://farm@cache…`): a dedicated user with a
# plain /bin/sh. Not root: sshd runs every session through the account's shell, and a root
# whose ~/.bashrc starts a version manager (bash reads it under sshd) adds its start-up, ~0.1 s
# here, to every SSH connection of all three tools.
remote_user=nixfarm-bench
made_user=0
if ! id -u "$remote_user" >/dev/null 2>&1; then
  # '*': no password, but not locked (sshd refuses locked accounts even with a key).
  useradd --system --no-create-home --home-dir / --shell /bin/sh --password '*' "$remote_user"
  made_user=1
fi
chmod 755 "$B"
# remote_dir DIR…: a directory of the cache host, owned by its account.
remote_dir() { mkdir -p "$@" && chown "$remote_user" "$@"; }
remote_dir "$B/remote"

# ---------------------------------------------------------------- cleanup
pids=()
mounts=()
cleanup() {
  set +e
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if ((made_user)) && [[ ${KEEP:-0} != 1 ]]; then
    # The sessions of the sshd stopped above end on their own; userdel refuses until then.
    for _ in $(seq 100); do pgrep -u "$remote_user" >/dev/null || break; sleep 0.1; done
    userdel "$remote_user"
  fi
  if [[ ${KEEP:-0} != 1 ]]; then
    rm -rf "$B/gcroots"
    if [[ -s $B/generated-paths ]]; then
      # Only the paths this run generated (unique salt), never a GC of the whole store.
      # One invocation: across several (xargs), a reference could be deleted before its referrer.
      nix-store --delete $(sort -u "$B/generated-paths") >/dev/null 2>&1
    fi
    rm -rf "$B"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- farmctl
if [[ -z ${FARMCTL:-} ]]; then
  log "building farmctl (release)"
  (cd "$repo" && cargo build --release --quiet --bin farmctl)
  FARMCTL=$repo/target/release/farmctl
fi

# ---------------------------------------------------------------- sshd on loopback
log "starting sshd"
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$B/host_key"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$B/client_key"
cp "$B/client_key.pub" "$B/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$B/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $B/host_key
PidFile $B/sshd.pid
AuthorizedKeysFile $B/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 100
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$B/sshd_config" 2>"$B/sshd.log" &
pids+=($!)
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$B/host_key.pub")" >"$B/known_hosts"
# The relay stands for 20 ms of network, so it must not add its own start-up to every
# connection: the system's interpreter without site (~30 ms), not a version manager's shim
# (pyenv's took ~0.3 s per start, all of it counted as "SSH connection" time).
relay_python=$(command -v /usr/bin/python3 || command -v python3)
for host in bench-lo bench-wan; do
  cat <<EOF
Host $host
  HostName 127.0.0.1
  Port $port
  User $remote_user
  IdentityFile $B/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $B/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
  [[ $host == bench-wan ]] && echo "  ProxyCommand $relay_python -S $here/delay_relay.py %h %p"
done >"$B/ssh_config"
# OpenSSH reads ~/.ssh/config from the passwd entry, not $HOME: an `ssh` first in PATH that
# adds `-F` stands in for the user's ~/.ssh/config (farmctl runs `ssh` from PATH).
printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$B/ssh_config" >"$B/bin/ssh"
chmod +x "$B/bin/ssh"
for _ in $(seq 100); do ssh -F "$B/ssh_config" bench-lo true 2>/dev/null && break; sleep 0.1; done
ssh -F "$B/ssh_config" bench-lo true

# ---------------------------------------------------------------- keys and configs
nix-store --generate-binary-cache-key "bench-$salt" "$B/cache.sk" "$B/cache.pk"
chmod 600 "$B/cache.sk"
farm_config() { # FILE COMPRESSION LEVEL [JOBS]
  cat >"$1" <<EOF
[repo]
url = "$B/no-repo"
[state]
dir = "$B/state"
[control]
socket = "$B/control.sock"
[cache]
url = "sftp://$remote_user@127.0.0.1:$port$B/remote/default" # every run passes --to
secret_key_files = ["$B/cache.sk"]
compression = "$2"
level = $3
jobs = ${4:-4}
ssh_identity = "$B/client_key"
ssh_known_hosts = "$B/known_hosts"
EOF
}
farm_config "$B/farm-zstd.toml" zstd 3
farm_config "$B/farm-xz.toml" xz 6
farm_config "$B/farm-zstd-jobs8.toml" zstd 3 8
nix_zstd="compression=zstd&compression-level=3&secret-key=$B/cache.sk"
nix_xz="compression=xz&compression-level=6&secret-key=$B/cache.sk"
lo_url() { echo "sftp://$remote_user@127.0.0.1:$port$B/remote/$1"; }
wan_url() { echo "sftp://bench-wan$B/remote/$1"; }

# ---------------------------------------------------------------- the fleet
log "generating the fleet (salt $salt)"
python3 "$here/genfleet.py" "$B/gen" "$salt"
build() { # OUT-LINK NIX-BUILD-ARGS… → prints the output paths
  local link=$1
  shift
  local outs
  outs=$(nix build "$@" --max-jobs 4 --json --out-link "$B/gcroots/$link" 2>>"$B/build.log" |
    python3 -c 'import json,sys; print(" ".join(o["outputs"][k] for o in json.load(sys.stdin) for k in o["outputs"]))')
  nix-store -qR $outs >>"$B/generated-paths" # deleted at the end (unless KEEP=1)
  echo "$outs"
}
t0=$(date +%s)
old=$(build old -f "$B/gen/fleet.nix" hosts)
new=$(build new -f "$B/gen/fleet.nix" hosts --argstr nightly 1)
many=$(build many -f "$B/gen/many.nix")
want rss && big=$(build big -f "$B/gen/big.nix") || big=
log "built in $(($(date +%s) - t0)) s"
stats() { # [-r] PATHS… → "paths bytes" (-r: of their closure)
  nix path-info --json "$@" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.values() if isinstance(d,dict) else d; d=list(d); print(len(d), sum(x["narSize"] for x in d))'
}
read -r old_paths old_bytes < <(stats -r $old)
read -r new_paths new_bytes < <(stats -r $new)
read -r many_paths _ < <(stats -r $many)
delta=$(comm -13 <(nix-store -qR $old | sort) <(nix-store -qR $new | sort))
read -r delta_paths delta_bytes < <(stats $delta)
per_host=$(for t in $old; do nix-store -qR "$t" | wc -l; done | tr '\n' ' ')
shared=$(for t in $old; do nix-store -qR "$t"; done | sort | uniq -c | awk '$1==4' | wc -l)

# ---------------------------------------------------------------- measuring
results=$B/results.tsv
: >"$results"
# sample NAME REP CMD…: runs CMD under /usr/bin/time, records seconds, peak RSS (KiB), load.
sample() {
  local name=$1 rep=$2
  shift 2
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! /usr/bin/time -f '%e %M %U %S' -o "$B/time.out" "$@" >"$B/last.out" 2>"$B/last.err"; then
    echo "FAILED: $name: $*" >&2
    cat "$B/last.err" >&2
    exit 1
  fi
  read -r secs rss user sys <"$B/time.out"
  # /usr/bin/time prints 2 decimals: the sub-second cases use `precise` instead.
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$secs" "$rss" "$load" "$(awk "BEGIN { print $user + $sys }")" >>"$results"
  log "$name #$rep: ${secs}s (cpu $user+$sys s, rss ${rss} KiB, load $load)"
}
# precise NAME REP CMD…: wall time with ns resolution (for the sub-second no-op cases).
precise() {
  local name=$1 rep=$2
  shift 2
  local load t0 t1
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s%N)
  if ! "$@" >"$B/last.out" 2>"$B/last.err"; then
    echo "FAILED: $name: $*" >&2
    cat "$B/last.err" >&2
    exit 1
  fi
  t1=$(date +%s%N)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.4f", ns / 1e9 }')" 0 "$load" 0 >>"$results"
  log "$name #$rep: $(((t1 - t0) / 1000000)) ms (load $load)"
}
# busy: CPU seconds all processes on the machine spent (from /proc/stat), for work whose
# processes are not our children (sshd, sftp-server).
busy() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100 }' /proc/stat; }
# machine NAME REP CMD…: like `sample`, but the CPU column is the whole machine's.
machine() {
  local name=$1 rep=$2 load before after t0 t1
  shift 2
  load=$(cut -d' ' -f1 /proc/loadavg)
  before=$(busy)
  t0=$(date +%s%N)
  "$@" >"$B/last.out" 2>"$B/last.err" || { echo "FAILED: $name: $*" >&2; cat "$B/last.err" >&2; exit 1; }
  t1=$(date +%s%N)
  after=$(busy)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f", ns / 1e9 }')" 0 "$load" "$(awk "BEGIN { print $after - $before }")" >>"$results"
  log "$name #$rep: $(((t1 - t0) / 1000000)) ms, machine cpu $(awk "BEGIN { print $after - $before }") s (load $load)"
}
# farm COMPRESSION URL ROOTS…: `farmctl publish` with that config (a script: /usr/bin/time runs it).
printf '#!/bin/sh\nc=$1; shift\nexec %s --config %s/farm-$c.toml publish --json --to "$@"\n' "$FARMCTL" "$B" >"$B/bin/farm"
chmod +x "$B/bin/farm"
farm=$B/bin/farm
# Hard links: every tool renames new files in. The cache host's account owns the copy.
clone() { rm -rf "$2" && cp -al "$1" "$2" && chown -R "$remote_user" "$2"; }

mount_sshfs() { # HOST MOUNTPOINT
  sshfs -F "$B/ssh_config" "$1:$B/remote" "$2"
  mounts+=("$2")
}

if want lo || want incr || want wan; then
  log "== loopback, zstd 3, full: $old_paths paths, $old_bytes bytes of NAR"
  mount_sshfs bench-lo "$B/mnt-lo"
  for r in $(seq "$REPS"); do
    remote_dir "$B/remote/ff$r"
    sample farm_full_lo "$r" "$farm" zstd "$(lo_url ff$r)" $old
    sample nix_full_local "$r" nix copy --to "file://$B/local/nf$r?$nix_zstd" $old
    sample nix_full_sshfs_lo "$r" nix copy --to "file://$B/mnt-lo/nsf$r?$nix_zstd" $old
    # Keep the first of each as the base of the incremental cases.
    if ((r > 1)); then rm -rf "$B/remote/ff$r" "$B/local/nf$r" "$B/remote/nsf$r"; fi
  done
fi

if want incr || want wan; then
  log "== loopback, incremental: $delta_paths new paths, $delta_bytes bytes of NAR"
  for r in $(seq "$REPS"); do
    clone "$B/remote/ff1" "$B/remote/fi$r"
    clone "$B/local/nf1" "$B/local/ni$r"
    clone "$B/remote/nsf1" "$B/remote/nsi$r"
    sample farm_incr_lo "$r" "$farm" zstd "$(lo_url fi$r)" $new
    sample nix_incr_local "$r" nix copy --to "file://$B/local/ni$r?$nix_zstd" $new
    sample nix_incr_sshfs_lo "$r" nix copy --to "file://$B/mnt-lo/nsi$r?$nix_zstd" $new
    if ((r > 1)); then rm -rf "$B/remote/fi$r" "$B/local/ni$r" "$B/remote/nsi$r"; fi
  done
  log "== loopback, no-op"
  for r in $(seq "$REPS"); do
    sample farm_noop_lo "$r" "$farm" zstd "$(lo_url fi1)" $new
    sample nix_noop_local "$r" nix copy --to "file://$B/local/ni1?$nix_zstd" $new
    sample nix_noop_sshfs_lo "$r" nix copy --to "file://$B/mnt-lo/nsi1?$nix_zstd" $new
  done
fi

if want xz; then
  # A reference-closed subset of the old fleet holding ~XZ_SUBSET of its NAR bytes.
  xz_roots=$(nix path-info --json -r $old | python3 -c '
import json, sys
d = json.load(sys.stdin)
d = list(d.values()) if isinstance(d, dict) else d
info = {x["path"]: x for x in d}
want = float(sys.argv[1]) * sum(x["narSize"] for x in d)
def closure(p, seen):
    todo = [p]
    while todo:
        q = todo.pop()
        if q not in seen:
            seen.add(q)
            todo.extend(r if r.startswith("/") else "/nix/store/" + r for r in info[q]["references"])
chosen, roots = set(), []
for p in sorted(info, key=lambda p: p.split("-", 1)[1]):
    if sum(info[q]["narSize"] for q in chosen) >= want:
        break
    if p not in chosen:
        closure(p, chosen)
        roots.append(p)
print(" ".join(roots))' "$XZ_SUBSET")
  read -r xz_paths xz_bytes < <(stats -r $xz_roots)
  log "== loopback, xz 6: $xz_paths paths, $xz_bytes bytes of NAR"
  for r in $(seq "$REPS"); do
    remote_dir "$B/remote/fx$r"
    sample farm_xz_lo "$r" "$farm" xz "$(lo_url fx$r)" $xz_roots
    sample nix_xz_local "$r" nix copy --to "file://$B/local/nx$r?$nix_xz" $xz_roots
    rm -rf "$B/remote/fx$r" "$B/local/nx$r"
  done
fi

if want wan; then
  rtt=$("$relay_python" -S "$here/delay_relay.py" --rtt x y)
  log "== ${rtt} ms RTT (relay), full"
  mount_sshfs bench-wan "$B/mnt-wan"
  for r in $(seq "$REPS"); do
    remote_dir "$B/remote/fw$r" "$B/remote/fw$r-8"
    sample farm_full_wan "$r" env PATH="$B/bin:$PATH" "$farm" zstd "$(wan_url fw$r)" $old
    sample farm_full_wan_jobs8 "$r" env PATH="$B/bin:$PATH" "$farm" zstd-jobs8 "$(wan_url fw$r-8)" $old
    rm -rf "$B/remote/fw$r-8"
    sample rsync_full_wan "$r" rsync -a -e "ssh -F $B/ssh_config" "$B/local/nf1/" "bench-wan:$B/remote/rw$r/"
    rm -rf "$B/remote/fw$r" "$B/remote/rw$r"
  done
  for r in $(seq "$SLOW_REPS"); do
    sample nix_full_sshfs_wan "$r" nix copy --to "file://$B/mnt-wan/nsw$r?$nix_zstd" $old
    rm -rf "$B/remote/nsw$r"
  done
  log "== ${rtt} ms RTT, incremental"
  for r in $(seq "$REPS"); do
    clone "$B/remote/ff1" "$B/remote/fiw$r"
    clone "$B/remote/nsf1" "$B/remote/nsiw$r"
    clone "$B/local/nf1" "$B/remote/riw$r"
    sample farm_incr_wan "$r" env PATH="$B/bin:$PATH" "$farm" zstd "$(wan_url fiw$r)" $new
    sample nix_incr_sshfs_wan "$r" nix copy --to "file://$B/mnt-wan/nsiw$r?$nix_zstd" $new
    sample rsync_incr_wan "$r" rsync -a -e "ssh -F $B/ssh_config" "$B/local/ni1/" "bench-wan:$B/remote/riw$r/"
    if ((r > 1)); then rm -rf "$B/remote/fiw$r" "$B/remote/nsiw$r" "$B/remote/riw$r"; fi
  done
  log "== ${rtt} ms RTT, no-op"
  for r in $(seq "$REPS"); do
    precise farm_noop_wan "$r" env PATH="$B/bin:$PATH" "$farm" zstd "$(wan_url fiw1)" $new
    precise nix_noop_sshfs_wan "$r" nix copy --to "file://$B/mnt-wan/nsiw1?$nix_zstd" $new
    precise rsync_noop_wan "$r" rsync -a -e "ssh -F $B/ssh_config" "$B/local/ni1/" "bench-wan:$B/remote/riw1/"
    precise ssh_connect_wan "$r" ssh -F "$B/ssh_config" bench-wan true
  done
fi

if want many; then
  log "== no-op of $many_paths paths on loopback"
  remote_dir "$B/remote/many"
  sample farm_many_first 1 "$farm" zstd "$(lo_url many)" $many
  for r in $(seq "$REPS"); do
    precise farm_many_noop "$r" "$farm" zstd "$(lo_url many)" $many
    precise ssh_connect_lo "$r" ssh -F "$B/ssh_config" bench-lo true
    precise nix_path_info_many "$r" nix path-info --json -r $many
  done
fi

if want rss; then
  read -r big_paths big_bytes < <(stats -r $big)
  log "== peak RSS, one path of $big_bytes bytes of NAR"
  for r in $(seq "$REPS"); do
    remote_dir "$B/remote/big$r"
    sample farm_big_lo "$r" "$farm" zstd "$(lo_url big$r)" $big
    rm -rf "$B/remote/big$r"
  done
fi

if want floor; then
  # The least CPU any publisher of this fleet over SFTP must spend, measured piece by piece on
  # the same bytes (all NARs in one file, in the page cache): zstd 3 on every core, SHA-256
  # of the NARs and of the compressed file (OpenSSL's, as fast as ours), and the compressed
  # bytes through ssh into a file on the same sshd (whole-machine CPU: sshd is not our child).
  # Serialising NARs from the store is left out, so the real floor is higher.
  log "== floor: the pieces of a loopback publish"
  for p in $(nix-store -qR $old); do nix-store --dump "$p"; done >"$B/fleet.nar"
  sha='import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)'
  for r in $(seq "$REPS"); do
    machine floor_zstd "$r" zstd -3 -T0 -q -f -o "$B/fleet.nar.zst" "$B/fleet.nar"
    machine floor_sha_nar "$r" python3 -c "$sha" "$B/fleet.nar"
    machine floor_sha_file "$r" python3 -c "$sha" "$B/fleet.nar.zst"
    machine floor_ssh "$r" sh -c "ssh -F '$B/ssh_config' bench-lo 'cat > $B/remote/floor.zst' <'$B/fleet.nar.zst'"
    rm -rf "$B/local/nfl"
    machine nix_full_local_floor "$r" nix copy --to "file://$B/local/nfl?$nix_zstd" $old
  done
  rm -f "$B/fleet.nar" "$B/fleet.nar.zst" "$B/remote/floor.zst"
fi

# ---------------------------------------------------------------- report
cat >"$B/facts.env" <<EOF
salt=$salt
old_paths=$old_paths
old_bytes=$old_bytes
new_paths=$new_paths
delta_paths=$delta_paths
delta_bytes=$delta_bytes
per_host=$per_host
shared=$shared
many_paths=$many_paths
xz_paths=${xz_paths:-}
xz_bytes=${xz_bytes:-}
big_bytes=${big_bytes:-}
rtt_ms=${rtt:-}
reps=$REPS
slow_reps=$SLOW_REPS
cpus=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
mem=$(free -g | awk '/Mem:/{print $2}') GiB
kernel=$(uname -r)
nix=$(nix --version)
EOF
python3 "$here/report.py" "$B/results.tsv" "$B/facts.env" | tee "$B/results.md"
if [[ ${KEEP:-0} == 1 ]]; then log "kept $B"; fi
