#!/usr/bin/env bash
# Installs what pgpilot needs to build and run on Debian 12, only what is missing:
# etcd-server, protobuf-compiler (etcd-client's build), PostgreSQL 15, HAProxy (routing tests), tmux
# (the live console tests and screenshots), wrk (the benchmark harness), nftables and iproute2
# (network partitions, the demo's isolate switch), DejaVu fonts (screenshots/make.sh).
# Sourced by demo.sh and run.sh.
set -euo pipefail

pgpilot_prereqs() {
    local need=()
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
    [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
    command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
    command -v tmux >/dev/null 2>&1 || need+=(tmux)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
    command -v gcc >/dev/null 2>&1 || need+=(build-essential)
    command -v nft >/dev/null 2>&1 || need+=(nftables)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need+=(fonts-dejavu-core)
    if ((${#need[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo ">> installing: ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust 1.90 or newer (https://rustup.rs), then run this again." >&2
        exit 2
    fi
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgpilot-target}"
}
