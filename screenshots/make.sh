#!/usr/bin/env bash
# Makes the README's screenshots of the console, from a live demo cluster:
#   cluster-list.png   every cluster of the namespace
#   switchover.png     the switchover dialog on the members tab
#   failover.png       the members tab while the old primary's machine is cut, before a replica
#                      takes over: the incident line counts down its lock
#   history.png        the timelines after that failover
#   events.png         the journal and what the console saw of it all
#   journal.png        the Events tab of a console opened after the failover
# It starts its own demo (under /var/tmp, loopback, no HAProxy), runs `demo console` in a private
# tmux server at 120x32, drives it with keys, captures the pane with its colours and renders each
# capture to PNG with `shot`; then stops the demo. Usage: screenshots/make.sh [OUT_DIR]
# (default: this directory). Needs the built binaries (cargo build) and tmux.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
bin=${PGPILOT_BIN_DIR:-${CARGO_TARGET_DIR:-/var/tmp/pgpilot-target}/debug}
cols=120 rows=32
dir=/var/tmp/pgpilot-shots-$$
sock=pgpilot-shots-$$
for b in demo pgpilot-console shot pgpilot-agent; do
    [ -x "$bin/$b" ] || { echo "make.sh: $bin/$b not found: run cargo build (or set PGPILOT_BIN_DIR)" >&2; exit 2; }
done
command -v tmux >/dev/null || { echo "make.sh: tmux is not installed (apt-get install tmux)" >&2; exit 2; }
mkdir -p "$out"

cleanup() {
    tmux -L "$sock" kill-server 2>/dev/null || true
    "$bin/demo" --dir "$dir" down --wipe >/dev/null 2>&1 || true
}
trap cleanup EXIT

screen() { tmux -L "$sock" capture-pane -t shots -p; }
# wait_for TEXT [SECONDS]: until the console shows TEXT
wait_for() {
    local deadline=$((SECONDS + ${2:-60}))
    until screen | grep -qF -- "$1"; do
        if ((SECONDS > deadline)); then
            echo "make.sh: the console never showed \"$1\"; it shows:" >&2
            screen >&2
            exit 1
        fi
        sleep 0.3
    done
}
keys() { tmux -L "$sock" send-keys -t shots "$@"; }
# shoot NAME: the pane as it is now, with colours, to NAME.png
shoot() {
    local ansi="$dir/$1.ansi"
    tmux -L "$sock" capture-pane -t shots -e -p >"$ansi"
    "$bin/shot" "$ansi" "$out/$1.png" "$cols" "$rows"
    echo "wrote $out/$1.png"
}
leader() { "$bin/demo" --dir "$dir" status | awk '$2 == "primary" && $3 == "running" { print $1 }'; }

echo "starting a demo cluster in $dir…"
"$bin/demo" --dir "$dir" up --no-console --no-haproxy --no-netns >/dev/null
tmux -L "$sock" new-session -d -s shots -x "$cols" -y "$rows" \
    "TERM=xterm-256color $bin/demo --dir $dir console"
wait_for "3/3"
sleep 2  # a sample from every member's REST API
shoot cluster-list

keys Enter
wait_for "streaming"
keys j
sleep 1.5
keys s
wait_for " do it"
shoot switchover
keys n

old=$(leader)
[ -n "$old" ] || { echo "make.sh: no primary in the demo" >&2; exit 1; }
"$bin/demo" --dir "$dir" cut "$old" >/dev/null
# during the failover: the old primary's API is down, its lease not yet expired
wait_for "SILENT"
sleep 3
shoot failover
# the other two race for the lock once the old lease expires (ttl 15 s)
deadline=$((SECONDS + 90))
until new=$(leader) && [ -n "$new" ] && [ "$new" != "$old" ]; do
    ((SECONDS < deadline)) || { echo "make.sh: no failover after cutting $old" >&2; exit 1; }
    sleep 0.5
done
wait_for "leader $new"
sleep 2

keys 2
wait_for "Timelines"
sleep 0.5
shoot history

keys 4
wait_for "Journal"
wait_for "leads timeline"
sleep 3.5  # the agents' journals
shoot events

# a console opened after the failover tells it from the agents' journals and the history key
etcd=$("$bin/demo" --dir "$dir" status | awk '$1 == "etcd" { print $2 }')
tmux -L "$sock" new-session -d -s late -x "$cols" -y "$rows" \
    "TERM=xterm-256color $bin/pgpilot-console --etcd $etcd --demo $dir"
tmux -L "$sock" kill-session -t shots 2>/dev/null || true
tmux -L "$sock" rename-session -t late shots
wait_for "etcd ok"
sleep 1
keys Enter
keys 4
wait_for "leads timeline"
wait_for "promoting"
sleep 0.5
shoot journal
keys q
