#!/usr/bin/env bash
# bench/slow-fills.sh [BIN] — issue 29's reproduction against a release binary: N_SLOW (630) fills whose origin
# sends 1 KiB and then pauses 25 s, from 10 client addresses at once; then a new 100-byte file and a stored
# one. Prints what the slow clients got, how long the two files took, the process's threads and /health.
# Defaults of cache.max_fills (512) and max_fills_per_client (64) apply; MAX_FILLS=N overrides the first.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BIN=${1:-target/release/image-cache}
[ -x "$BIN" ] || cargo build --release --locked -q
bench_start slow-fills
PORT=$((20000 + RANDOM % 10000)); ORIGIN_PORT=$((PORT + 1))
cat >"$W/config.toml" <<TOML
state_dir = "$W/state"
[http]
listen = ["127.0.0.1:$PORT"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[cache]
max_size = "1G"
${MAX_FILLS:+max_fills = $MAX_FILLS}
[upstream]
read_timeout = "60s"
[[domains]]
name = "slow.test"
origin = "http://127.0.0.1:$ORIGIN_PORT"
TOML
"$BIN" serve --config "$W/config.toml" >"$W/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ORIGIN_PORT=$ORIGIN_PORT python3 bench/slow-fills.py "http://127.0.0.1:$PORT" slow.test "${N_SLOW:-630}" 10 25 &
DRIVER=$!
sleep 15
echo "threads of the service: $(awk '/^Threads/ {print $2}' "/proc/${PIDS[0]}/status"), RSS $(awk '/^VmRSS/ {print $2, $3}' "/proc/${PIDS[0]}/status")"
echo "/health: $(curl -s --max-time 5 -w ' (%{http_code})' "http://127.0.0.1:$PORT/health" || echo 'no answer')"
wait $DRIVER
