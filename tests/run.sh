#!/usr/bin/env bash
# Runs every test: unit, CLI and end-to-end (real etcd + PostgreSQL 15 + agents on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
