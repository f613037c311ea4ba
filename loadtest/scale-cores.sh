#!/usr/bin/env bash
# How the gateway scales across cores: one gateway with W shards pinned to
# CPUs 0..W-1, driven by K independent `sluice-loadtest` processes, each
# pinned to a CPU of its own above the gateway's. Two loads per W:
#
#   bulk    K streams of 64 KiB frames as fast as they go (fast path):
#           aggregate MB/s and gateway CPU-s per GiB;
#   fan-in  K × SESSIONS streams at RATE frames/s of 4 KiB each (relay):
#           p99 (worst loader) and gateway CPU-s.
#
# Sessions land on shards by the hash of their session id, so with K
# streams and W shards some shards can carry more than others: the table
# says how many streams each run had per shard on average (K/W).
#
# Usage: loadtest/scale-cores.sh [BIN_DIR] [OUT_DIR]
#   BIN_DIR  holds `sluice` and `sluice-loadtest` (default target/release)
#   WORKERS="1 2 4 8" LOADERS=8 FRAMES=16384 SESSIONS=100 RATE=100 DURATION=8
# Needs as many CPUs as the largest W plus LOADERS.
set -euo pipefail

BIN=${1:-target/release}
OUT=${2:-$(mktemp -d)}
WORKERS=${WORKERS:-"1 2 4 8"}
LOADERS=${LOADERS:-8}
FRAMES=${FRAMES:-16384}
SESSIONS=${SESSIONS:-100}
RATE=${RATE:-100}
DURATION=${DURATION:-8}
SECRET=scale-cores-secret-0123456789abcdef
KEY=scale-cores-edge-key-0123456789
CPUS=$(nproc)
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

max_w=0
for w in $WORKERS; do ((w > max_w)) && max_w=$w; done
if ((max_w + LOADERS > CPUS)); then
  echo "needs $((max_w + LOADERS)) CPUs (largest W $max_w + $LOADERS loaders), this host has $CPUS" >&2
  exit 2
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

edges=""
for k in $(seq 1 "$LOADERS"); do edges+="lt$k=$KEY,"; done

run_load() { # scenario w port extra-args...
  local scenario=$1 w=$2 port=$3
  shift 3
  local pids=()
  for k in $(seq 1 "$LOADERS"); do
    local cpu=$((max_w + k - 1))
    "$BIN/sluice-loadtest" "$scenario" --gateway "127.0.0.1:$port" --targets "$@" \
      --edge "lt$k" --edge-key "$KEY" --secret "$SECRET" \
      --load-cpu "$cpu" --source-cpu "$cpu" \
      --out "$OUT/$scenario-w$w-l$k" >"$OUT/$scenario-w$w-l$k.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

printf '%-7s %3s %6s | %10s %12s | %10s %10s %12s\n' scenario W K "MB/s" "CPU-s/GiB" "p99 µs" "CPU-s" "frames/s"
for w in $WORKERS; do
  port=$((19000 + w))
  cpus="0-$((w - 1))"
  SLUICE_LISTEN="127.0.0.1:$port" SLUICE_WORKERS=$w SLUICE_TOKEN_SECRET=$SECRET \
    SLUICE_EDGE_KEYS=${edges%,} SLUICE_LOG=warn \
    SLUICE_LIMITS_MAX_SESSIONS=200000 SLUICE_LIMITS_MAX_EDGE_CONNECTIONS=100000 \
    taskset -c "$cpus" "$BIN/sluice" >"$OUT/gateway-w$w.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null && break
    sleep 0.1
  done

  t0=$(cpu_ticks $gw)
  run_load bulk "$w" "$port" gateway --frames "$FRAMES" --runs 1 || echo "bulk W=$w: a loader failed (see $OUT)" >&2
  t1=$(cpu_ticks $gw)
  run_load fan-in "$w" "$port" gateway-relay --sessions "$SESSIONS" --rate "$RATE" --duration "$DURATION" ||
    echo "fan-in W=$w: a loader failed (see $OUT)" >&2
  t2=$(cpu_ticks $gw)
  kill "$gw"
  wait "$gw" 2>/dev/null || true

  python3 - "$OUT" "$w" "$LOADERS" "$FRAMES" "$SESSIONS" "$RATE" "$DURATION" "$(((t1 - t0)))" "$(((t2 - t1)))" "$hz" <<'EOF'
import json, sys, glob
out, w, k, frames, sessions, rate, duration, bulk_t, fan_t, hz = sys.argv[1:]
w, k, frames, hz = int(w), int(k), int(frames), int(hz)
def outcomes(scn):
    rows = []
    for f in sorted(glob.glob(f"{out}/{scn}-w{w}-l*/report.json")):
        r = json.load(open(f))
        for o in r.get("outcomes", r.get("targets", [])):
            rows.append(o)
    return rows
bulk = outcomes("bulk")
mb = sum(o.get("mb_per_s") or 0 for o in bulk)
gib = k * frames * 65536 / 2**30
bulk_cpu = int(bulk_t) / hz
print(f"{'bulk':<7} {w:>3} {k:>6} | {mb:>10.0f} {bulk_cpu / gib:>12.2f} | {'':>10} {bulk_cpu:>10.2f} {'':>12}"
      + ("" if len(bulk) == k else f"  ({len(bulk)} of {k} loaders reported)"))
fan = outcomes("fan-in")
p99 = max((o.get("latency") or {}).get("p99_us", 0) for o in fan) if fan else 0
msgs = sum(o.get("messages", 0) for o in fan)
fan_cpu = int(fan_t) / hz
print(f"{'fan-in':<7} {w:>3} {k:>6} | {'':>10} {'':>12} | {p99:>10.0f} {fan_cpu:>10.2f} {msgs / float(duration):>12.0f}"
      + ("" if len(fan) == k else f"  ({len(fan)} of {k} loaders reported)"))
EOF
done
