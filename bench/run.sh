#!/usr/bin/env bash
# Benchmark peerjsd against peerjs-server 1.0.2 and the floor relay; see bench/README.md.
#   bench/run.sh                 # full run: every scenario, 3 interleaved runs per server
#   bench/run.sh --quick         # smoke run, under a minute
#   bench/run.sh --help          # every flag (scenarios, servers, runs, hold19k, …)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 2; }

echo "building the harness (release)…" >&2
cargo build --release -p peerjsd-bench >&2

echo "building peerjsd (release)…" >&2
if ! cargo build --release --bin peerjsd >&2; then
    echo "warning: peerjsd does not build; benchmarking without it" >&2
    export PEERJSD_BENCH_NO_PEERJSD="peerjsd did not build (cargo build --release --bin peerjsd failed)"
fi

if [ ! -f bench/node/node_modules/peer/dist/bin/peerjs.js ]; then
    if command -v npm >/dev/null; then
        echo "installing peer@1.0.2 (npm ci in bench/node)…" >&2
        (cd bench/node && npm ci --no-audit --no-fund >&2) ||
            echo "warning: npm ci failed; benchmarking without peerjs-server" >&2
    else
        echo "warning: npm not found; benchmarking without peerjs-server" >&2
    fi
fi

exec target/release/peerjsd-bench "$@"
