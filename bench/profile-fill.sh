#!/usr/bin/env bash
# bench/profile-fill.sh — where a cold fill's time goes: image-cache fills a SIZE_MB (default 512) MiB file from an
# nginx HTTPS origin on 127.0.0.1 for one client while `perf record -g` samples it, ROUNDS (default 3) fresh fills;
# writes the top of `perf report` (self time per symbol) to bench/out/fill-512m.txt, the threads' share of the
# samples, and `perf stat` counters of one more fill to bench/out/fill-512m.stat.txt. Needs perf (Debian
# linux-perf) and root, or perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-512}
ROUNDS=${ROUNDS:-3}
OUT=bench/out
mkdir -p "$OUT"
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v perf >/dev/null || { echo "bench/profile-fill.sh needs perf (Debian: linux-perf)"; exit 1; }
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked -q
BIN=$PWD/target/release/image-cache

source bench/fill-scene.sh
cat "$W/www/big.img" >/dev/null # the origin's page cache is warm
fill() { curl -sf -H 'Host: files.test' -o /dev/null -w '%{time_total}\n' http://127.0.0.1:18080/big.img; }

times=()
for i in $(seq "$ROUNDS"); do
  fresh_cache
  perf record -F 999 -g -p "$IC" -o "$W/fill-$i.data" >/dev/null 2>&1 & rec=$!
  sleep 0.3
  times+=("$(fill)")
  kill -INT "$rec"; wait "$rec" 2>/dev/null || true
done
fresh_cache
perf stat -p "$IC" -e task-clock,context-switches,cpu-migrations,page-faults >/dev/null 2>"$W/stat" & st=$!
sleep 0.3
fill >/dev/null
kill -INT "$st"; wait "$st" 2>/dev/null || true
name=fill-${SIZE_MB}m
{
  echo "# bench/profile-fill.sh: $ROUNDS cold fills of $SIZE_MB MiB over TLS from nginx on 127.0.0.1, $(date -u +%Y-%m-%d)"
  echo "# fill times (s): ${times[*]}"
  echo
  echo "## threads (share of samples)"
  perf report -i "$W/fill-$ROUNDS.data" --stdio --no-children --sort comm --percent-limit 1 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -12
  echo
  echo "## symbols (self time)"
  perf report -i "$W/fill-$ROUNDS.data" --stdio --no-children --sort dso,symbol --percent-limit 1 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -40
} >"$OUT/$name.txt"
cp "$W/stat" "$OUT/$name.stat.txt"
echo "wrote $OUT/$name.txt and $OUT/$name.stat.txt"
