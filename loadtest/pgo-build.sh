#!/usr/bin/env bash
# Builds the gateway with profile-guided optimisation: an instrumented
# gateway serves the loader's scenarios on every path (fast, query, relay;
# bulk, fan-in, small frames, fan-out, churn, idle), and the profile it
# writes when the loader stops it with SIGTERM lays out the release build.
#
#     loadtest/pgo-build.sh             # about 3 builds and 2 minutes of load
#     target/pgo/sluice                 # the optimised gateway
#
# Why: between two frames of one stream the kernel's TCP work and the other
# streams' frames evict the gateway's code and per-stream state from the
# caches, so a frame's user-space time is mostly misses (docs/benchmarks.md,
# "Fan-in, eighth sitting"). The profile puts the code a frame runs next to
# itself and moves what it never runs out of the way.
#
# Needs `rustup component add llvm-tools` (llvm-profdata of the compiler's
# own LLVM version). The profile is not committed: it is rebuilt from the
# code it describes, so it can never be stale.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "llvm-profdata not found: run \`rustup component add llvm-tools\`" >&2
  exit 2
fi
work=target/pgo
raw="$PWD/$work/raw"
rm -rf "$raw" && mkdir -p "$raw"

# The loader and the floor relay, built as the README builds everything.
cargo build --release -q --workspace
lt=target/release/sluice-loadtest

# `--target` keeps the flags off build scripts and proc macros.
echo "pgo: building the instrumented gateway" >&2
RUSTFLAGS="-Cprofile-generate=$raw" \
  cargo build --release -q -p sluice --bin sluice --target "$host" --target-dir "$work/instrumented"
gw="$work/instrumented/$host/release/sluice"

echo "pgo: training on the loader's scenarios" >&2
out="$work/training"
$lt bulk --targets gateway,gateway-query,gateway-relay --frames 4096 --runs 1 --gateway-bin "$gw" --out "$out/bulk"
$lt bulk --targets gateway,gateway-relay --frames 20000 --frame-size 4096 --runs 1 --gateway-bin "$gw" --out "$out/bulk-4k"
$lt fan-in --targets gateway,gateway-query,gateway-relay --duration 8 --gateway-bin "$gw" --out "$out/fan-in"
$lt latency --targets gateway,gateway-relay --frame-size 1024 --rate 2000 --duration 5 --gateway-bin "$gw" --out "$out/latency"
$lt fan-out --targets gateway --viewers 100 --frame-size 16384 --rate 64 --duration 5 --gateway-bin "$gw" --out "$out/fan-out"
$lt churn --targets gateway --rate 300 --duration 5 --gateway-bin "$gw" --out "$out/churn"
$lt idle --targets gateway --sessions 1000 --gateway-bin "$gw" --out "$out/idle"
if ! ls "$raw"/*.profraw >/dev/null 2>&1; then
  echo "pgo: the instrumented gateway wrote no profile (did it exit on SIGTERM?)" >&2
  exit 1
fi
"$profdata" merge -o "$work/sluice.profdata" "$raw"

echo "pgo: building the optimised gateway" >&2
RUSTFLAGS="-Cprofile-use=$PWD/$work/sluice.profdata" \
  cargo build --release -q -p sluice --bin sluice --target "$host" --target-dir "$work/optimised"
cp "$work/optimised/$host/release/sluice" "$work/sluice"
echo "pgo: $work/sluice" >&2
