#!/usr/bin/env bash
# User-space instructions per message or per connection of one peerjsd binary, counted with
# callgrind: exact and repeatable where CPU time on this shared machine is not. See
# bench/README.md ("Instructions per message").
#   bench/instructions.sh target/release/peerjsd relay100
#   bench/instructions.sh target/ab-crate-json/release/peerjsd relay100
# SCENARIO: relay1, relay100 (per message relayed, at saturation), rate1k (per message, 200
# pairs × 5/s), churn, rooms4 (per connection accepted). Build first (bench/ab.sh or
# `cargo build --release -p peerjsd-bench --bin peerjsd`).
#
# The server runs under callgrind pinned to one core (one runtime worker, as in the
# benchmark), the load generator as in the benchmark on the other core. Counting starts after
# every peer is connected and a warm-up (callgrind_control --zero) and ends with a dump after
# the window; the units are the server's own counters over the same span (/metrics).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    echo "usage: bench/instructions.sh PEERJSD_BINARY SCENARIO [WINDOW_SECONDS]" >&2
    exit 2
fi
binary=$1 scenario=$2 window=${3:-10}
for tool in valgrind callgrind_control curl taskset; do
    command -v $tool >/dev/null || { echo "$tool is required" >&2; exit 2; }
done
[ -x "$binary" ] || { echo "no binary at $binary" >&2; exit 2; }
loadgen=target/release/loadgen
[ -x $loadgen ] || { echo "build the load generator: cargo build --release -p peerjsd-bench" >&2; exit 2; }

server_args=()
case $scenario in
    relay1) load=(--scenario relay --pairs 1 --window 256 --flush-every 16); peers=2 metric=relayed ;;
    relay100) load=(--scenario relay --pairs 100 --window 16); peers=200 metric=relayed ;;
    rate1k) load=(--scenario rate --pairs 200 --per-pair-rate 5); peers=400 metric=relayed ;;
    churn) load=(--scenario churn --concurrency 32 --hubs 8); peers=8 metric=accepted ;;
    rooms4) load=(--scenario rooms --concurrency 32 --candidates 10 --rooms-token); peers=0
        metric=accepted server_args=(--rooms token) ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

out=$(mktemp -d "${TMPDIR:-/tmp}/peerjsd-callgrind.XXXXXX")
port=$((9300 + RANDOM % 500))
taskset -c 0 valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/callgrind.out" \
    "$binary" --port $port --host 127.0.0.1 --path / --concurrent-limit 100000 --rate-limit 0 \
    --max-connections-per-ip 0 "${server_args[@]}" >"$out/server.log" 2>&1 &
server=$!
loadgen_pid=
cleanup() {
    [ -n "$loadgen_pid" ] && kill "$loadgen_pid" 2>/dev/null
    kill "$server" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT

# The server's counter for the unit: messages relayed (every type) or connections accepted.
units() {
    curl -sf -H 'Accept: text/plain' "http://127.0.0.1:$port/metrics" | awk -v m="$metric" '
        m == "relayed" && /^peerjs_messages_relayed_total/ { n += $NF }
        m == "accepted" && /^peerjs_connections_accepted_total/ { n += $NF }
        /^peerjs_peers / { p = $NF }
        END { printf "%d %d\n", n, p }'
}
wait_until() { # seconds, condition…
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -lt $deadline ] || { echo "timed out: $*" >&2; cat "$out/server.log" >&2; exit 1; }
        sleep 0.2
    done
}
wait_until 60 curl -sf "http://127.0.0.1:$port/health" -o /dev/null

# The load generator's own window is longer than ours: it runs on while we count.
taskset -c 1 $loadgen "${load[@]}" --port $port --server-pid $server --warmup 2 \
    --duration $((window * 3 + 60)) >"$out/loadgen.json" 2>"$out/loadgen.err" &
loadgen_pid=$!
peers_connected() { read -r _ p < <(units); [ "$p" -ge "$peers" ]; }
wait_until 300 peers_connected
sleep 3 # warm-up
read -r before _ < <(units)
callgrind_control --zero $server >/dev/null 2>&1
sleep "$window"
callgrind_control --dump $server >/dev/null 2>&1
read -r after _ < <(units)

dump=$(ls "$out"/callgrind.out.* 2>/dev/null | head -1)
[ -n "$dump" ] || { echo "callgrind wrote no dump in $out" >&2; exit 1; }
instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
count=$((after - before))
[ "$count" -gt 0 ] || { echo "no $metric units in the window" >&2; exit 1; }
unit=$([ $metric = relayed ] && echo message || echo connection)
awk -v i="$instructions" -v n="$count" -v u="$unit" -v s="$scenario" -v b="$binary" \
    'BEGIN { printf "%s %s: %.0f instructions / %d %ss = %.0f per %s\n", b, s, i, n, u, i / n, u }'
