#!/usr/bin/env bash
# Cluster in a box: installs what is missing, builds, then runs the demo binary — by default
# `demo up`: etcd + 3 agents + 3 PostgreSQL 15 + HAProxy, healthy, with the live console on it
# (quitting asks whether to stop it). Arguments go to the demo (try --help): `tests/demo.sh cut
# node1`, `tests/demo.sh status`, `tests/demo.sh down --wipe`, `tests/demo.sh up --no-console`.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
cargo build --workspace --bins
exec "$CARGO_TARGET_DIR/debug/demo" "$@"
