#!/usr/bin/env bash
# Runs every test: unit, CLI and end-to-end (real etcd + PostgreSQL 15 + agents on loopback,
# beside real Patroni), after installing what is missing (tests/prereqs.sh: packages, Rust, and
# Patroni in /var/tmp/patroni-sys-venv). A test whose prerequisite is still missing is skipped:
# it records itself in $PGPILOT_SKIPPED and is not counted as passed; with CI=true it fails
# instead. Closes with the skipped tests and their reasons, then one line that sums up every
# test binary: "tests: N passed, N failed, N skipped". Exits non-zero when a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
pgpilot_prereqs
pgpilot_cargo_deb
pgpilot_patroni
pgpilot_pg18
cargo build --workspace --all-targets
log=$(mktemp)
PGPILOT_SKIPPED=$(mktemp)
export PGPILOT_SKIPPED
trap 'rm -f "$log" "$PGPILOT_SKIPPED"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# a test counts as skipped once, however many parts of it were; a failed test stays failed
awk -v skipped="$PGPILOT_SKIPPED" '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
    /^test .* \.\.\. FAILED$/ { failed[$2] = 1 }
    END {
        while ((getline line < skipped) > 0) {
            name = substr(line, 1, index(line, ": ") - 1)
            if (name in failed) continue
            if (!(name in seen)) { seen[name] = 1; s++ }
            reasons[++n] = line
        }
        if (s) print "skipped (" s "):"
        for (i = 1; i <= n; i++) print "  " reasons[i]
        printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s
    }' "$log"
exit "$status"
