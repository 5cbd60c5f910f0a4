#!/usr/bin/env bash
# bench/profile-hits.sh — where a hit's time goes: image-cache serves a 100 KB hit (50 connections) and a 1 GiB hit
# (4 connections) to wrk while `perf record -g` samples it; writes the top of `perf report` (children and self
# time per symbol) to bench/out/hits-100k.txt and bench/out/hits-1g.txt, and `perf stat` counters next to them.
# Needs perf (Debian package linux-perf) and root, or perf_event_paranoid <= 1. DUR (default 8) seconds per case.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8}
OUT=bench/out
mkdir -p "$OUT"
source bench/lib.sh
bench_start profile
bench_need perf:linux-perf nginx:nginx-light wrk:wrk
command -v perf >/dev/null || { echo "bench/profile-hits.sh needs perf (Debian: linux-perf)"; exit 1; }
# Symbols for the profile: a release build with debug line tables.
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked -q
BIN=target/release/image-cache

mkdir -p "$W/www"
head -c 1073741824 /dev/urandom >"$W/www/big.bin"
head -c 100000 /dev/urandom >"$W/www/small.bin"
cat >"$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 256; }
http { access_log off; sendfile on; server { listen 127.0.0.1:18091; root $W/www; } }
CONF
nginx -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)
cat >"$W/ic.toml" <<CONF
state_dir = "$W/state"
[cache]
max_size = "4G"
[http]
listen = ["127.0.0.1:18090"]
[dns]
enabled = false
[[domains]]
name = "bench.test"
origin = "http://127.0.0.1:18091"
CONF
IMAGE_CACHE_LOG__LEVEL=warn "$BIN" serve --config "$W/ic.toml" & IC=$!; PIDS+=("$IC")
sleep 1
for f in big.bin small.bin; do curl -sf -H 'Host: bench.test' "http://127.0.0.1:18090/$f" -o /dev/null; done
sleep 1

profile() { # profile NAME CONNS PATH
  local name=$1 conns=$2 path=$3
  wrk -t2 -c"$conns" -d"$((DUR + 2))s" -H 'Host: bench.test' "http://127.0.0.1:18090$path" >"$W/$name.wrk" &
  local wrk=$!
  sleep 1
  perf stat -p "$IC" -e task-clock,context-switches,cpu-migrations,page-faults -- sleep "$DUR" 2>"$OUT/$name.stat.txt" || true
  wait "$wrk"
  wrk -t2 -c"$conns" -d"$((DUR + 2))s" -H 'Host: bench.test' "http://127.0.0.1:18090$path" >/dev/null &
  wrk=$!
  sleep 1
  perf record -F 499 -g -p "$IC" -o "$W/$name.data" -- sleep "$DUR" >/dev/null 2>&1 || true
  wait "$wrk"
  {
    echo "# bench/profile-hits.sh $name ($conns connections, $path), $(date -u +%Y-%m-%d)"
    grep -E "Requests/sec|Transfer/sec" "$W/$name.wrk"
    echo
    perf report -i "$W/$name.data" --stdio --no-children --sort dso,symbol --percent-limit 1 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -40
  } >"$OUT/$name.txt"
  echo "wrote $OUT/$name.txt and $OUT/$name.stat.txt"
}
profile hits-100k 50 /small.bin
profile hits-1g 4 /big.bin
