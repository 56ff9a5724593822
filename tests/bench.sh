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
reps="${1:-3}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
venv=/var/tmp/patroni-sys-venv
if [ ! -x "$venv/bin/patroni" ]; then
    echo ">> installing Patroni (PyPI patroni[etcd3]) into $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'patroni[etcd3]' psycopg2-binary
fi
cargo build --release --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$CARGO_TARGET_DIR/release/bench" all "$reps" "$venv/bin/patroni" "$venv/bin/patronictl" | tee "$log"
mkdir -p tests/bench-results
out="tests/bench-results/$(date +%F)-all.json"
tail -n 1 "$log" > "$out"
echo ">> saved $out"
