#!/usr/bin/env bash
# The benchmark harness, one command: installs what is missing (the test prerequisites, wrk, and
# real Patroni 4.x from PyPI into /var/tmp/patroni-sys-venv with Debian's Python so that the
# postgres user can run it), builds pgpilot in release mode, and runs every scenario for pgpilot
# and Patroni side by side in one run (`bench all`). The last line of the output, a JSON
# document, is also saved under tests/bench-results/<date>-all.json.
#
#   tests/bench.sh [REPS]      (default 3; about 25 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
pgpilot_patroni
reps="${1:-3}"
venv=/var/tmp/patroni-sys-venv
cargo build --release --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$CARGO_TARGET_DIR/release/bench" all "$reps" "$venv/bin/patroni" "$venv/bin/patronictl" | tee "$log"
mkdir -p tests/bench-results
out="tests/bench-results/$(date +%F)-all.json"
tail -n 1 "$log" > "$out"
echo ">> saved $out"
