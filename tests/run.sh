#!/usr/bin/env bash
# Runs every test: unit, CLI and end-to-end (real etcd + PostgreSQL 15 + agents on loopback),
# and closes with one line that sums up every test binary: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
