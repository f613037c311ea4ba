#!/usr/bin/env bash
# Runs every scenario at the sizes ARCHITECTURE.md's budgets name, each
# against the direct path, the gateway, nginx and haproxy in the same run,
# then prints the README's figures table from the JSON reports.
#
#     loadtest/budgets.sh                 # everything (about 10 minutes)
#     loadtest/budgets.sh bulk latency    # some scenarios
#
# Reports, HDR files and plots land in target/loadtest/<scenario>/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sluice -p sluice-loadtest
lt=target/release/sluice-loadtest
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(bulk latency fan-in fan-out churn idle revoke)
failed=()
# A scenario with errors still leaves its report; go on to the next one.
run() { "$@" || failed+=("${*:2}"); }
for s in "${want[@]}"; do
  case "$s" in
    bulk)    run $lt bulk --frames 20000 --frame-size 65536 --runs 5 ;;
    latency) run $lt latency --frame-size 1024 --rate 2000 --duration 10 ;;
    fan-in)  run $lt fan-in --sessions 200 --frame-size 4096 --rate 50 --duration 10 ;;
    # 1,000 viewers of a 1 MiB/s feed is 1 GiB/s into the loader's one
    # sink core on a 2-core host; 100 viewers shows the gateway unsaturated.
    fan-out) run $lt fan-out --viewers 1000 --frame-size 16384 --rate 64 --duration 10
             run $lt fan-out --viewers 100 --frame-size 16384 --rate 64 --duration 10 --out target/loadtest/fan-out-100 ;;
    churn)   run $lt churn --rate 500 --duration 10 ;;
    # 10,000 sessions through a proxy need 20,000 descriptors in the loader
    # alone; the proxies are compared at 4,000.
    idle)    run $lt idle --sessions 10000 --targets gateway --out target/loadtest/idle
             run $lt idle --sessions 4000 --out target/loadtest/idle-4000 ;;
    # A throwaway redis-server for the revocation storm.
    revoke)  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
             redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
             rpid=$!
             sleep 0.5
             run $lt revoke --redis "redis://127.0.0.1:$port/" --sessions 1000 --rate 1000
             kill $rpid ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
python3 loadtest/summary.py target/loadtest
if [ ${#failed[@]} -gt 0 ]; then
  echo "scenarios with errors: ${failed[*]}" >&2
  exit 1
fi
