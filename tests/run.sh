#!/usr/bin/env bash
# The test command: sets up a fresh Debian 12 machine (as root) and runs every test against
# real nix, git, sshd and nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-debian.sh
cargo build --locked --bins
exec cargo test --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
