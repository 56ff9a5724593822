#!/usr/bin/env bash
# Starts a local 3-node pgpilot cluster (etcd + 3 agents + 3 PostgreSQL 15) and opens the live
# console on it; quitting the console (q) stops the cluster.
# Extra arguments go to the demo binary (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
cargo build --workspace --bins
exec "$CARGO_TARGET_DIR/debug/demo" "$@"
