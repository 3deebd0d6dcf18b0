#!/usr/bin/env bash
# Same-run A/B of peerjsd against a variant of itself built with a cargo feature; see
# bench/README.md ("A/B against a variant build").
#   bench/ab.sh crate-json --scenarios relay1,relay100,rate5k --runs 5
#   bench/ab.sh appender-log --scenarios churn,rooms4 --runs 5
# The default build runs as `peerjsd`, the variant as `baseline`; the ratio column is
# peerjsd ÷ variant. Every other flag goes to peerjsd-bench (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bench/ab.sh FEATURE [peerjsd-bench flags…]   (FEATURE: see [features] in Cargo.toml)" >&2
    exit 2
fi
feature=$1
shift
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 2; }

echo "building the harness and peerjsd (release)…" >&2
cargo build --release -p peerjsd-bench >&2
cargo build --release --bin peerjsd >&2
# A target directory of its own: the variant never replaces target/release/peerjsd, and a
# rebuild of one side does not rebuild the other.
variant_dir=target/ab-$feature
echo "building peerjsd --features $feature (release, in $variant_dir)…" >&2
cargo build --release --bin peerjsd --features "$feature" --target-dir "$variant_dir" >&2

exec target/release/peerjsd-bench --baseline "$variant_dir/release/peerjsd" \
    --servers baseline,peerjsd "$@"
