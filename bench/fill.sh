#!/usr/bin/env bash
# bench/fill.sh — cold fills: a download through an empty image-cache (which fetches from the HTTPS origin
# while streaming to the client) against the same download straight from the origin (nginx, TLS), and N
# clients asking an empty cache for the same file at once (one origin download shared by all) against N
# clients downloading it from the origin at once. Loopback, same run. SIZE_MB (default 512), N (default 20), REPEAT (default 3, medians).
set -euo pipefail
set -E; trap 'exit 1' ERR
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-512}
N=${N:-20}
REPEAT=${REPEAT:-3}
command -v nginx >/dev/null && command -v curl >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light curl >/dev/null; }
cargo build --release --locked -q
BIN=$PWD/target/release/image-cache
source bench/fill-scene.sh
secs() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
HZ=$(getconf CLK_TCK)
ticks() { local s; read -ra s < "/proc/$1/stat"; echo $((s[13] + s[14])); }
# CPU seconds per GB of the file: of the image-cache process during one cold fill (TLS from the origin,
# hashing, the store's writes, serving its client), and of curl downloading it directly (TLS only).
gb=$(echo "$SIZE_MB * 1048576 / 1000000000" | bc -l)
fill_cpu() { local c0; c0=$(ticks "$IC"); through; echo "($(ticks "$IC") - $c0) / $HZ / $gb" | bc -l; }
direct_cpu() { ( direct; read -ra s < "/proc/$BASHPID/stat"; echo "(${s[15]} + ${s[16]}) / $HZ / $gb" | bc -l ); }
direct() { curl -sf --cacert "$W/ca.pem" -o /dev/null https://localhost:18443/big.img || { echo "direct download failed" >&2; exit 1; }; }
through() {
  curl -sf -H 'Host: files.test' -o /dev/null http://127.0.0.1:18080/big.img ||
    { echo "download through image-cache failed:" >&2; tail -3 "$W/ic.log" >&2; exit 1; }
}
many() { local p=(); for _ in $(seq "$N"); do through & p+=($!); done; for x in "${p[@]}"; do wait "$x"; done; }
many_direct() { local p=(); for _ in $(seq "$N"); do direct & p+=($!); done; for x in "${p[@]}"; do wait "$x"; done; }

direct # page cache warm for both sides
: >"$W/rows"
for i in $(seq "$REPEAT"); do
  d=$(secs direct)
  md=$(secs many_direct)
  fresh_cache; c=$(secs through)
  fresh_cache; before=$(grep -c 'GET /big.img' "$W/access.log"); m=$(secs many)
  gets=$(( $(grep -c 'GET /big.img' "$W/access.log") - before ))
  fresh_cache; fc=$(fill_cpu); dc=$(direct_cpu)
  echo "$d $c $m $gets $md $fc $dc" >>"$W/rows"
  printf 'round %d: direct %.2f s, cold through the cache %.2f s; %d clients at once: direct %.2f s, cold through the cache %.2f s (%d origin GETs)\n' "$i" "$d" "$c" "$N" "$md" "$m" "$gets"
done
python3 - "$W/rows" <<PY
import statistics as st, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
d = st.median(r[0] for r in rows); c = st.median(r[1] for r in rows); m = st.median(r[2] for r in rows)
print(f"machine: $(nproc) cores, $(uname -r); nginx $(nginx -v 2>&1 | sed 's/.*\///') over TLS; {int($SIZE_MB)} MiB file; medians of $REPEAT rounds")
print(f"cold fill through image-cache: {c:6.2f} s   direct from the origin: {d:6.2f} s   ratio {st.median(r[1]/r[0] for r in rows):.2f}")
md = st.median(r[4] for r in rows)
fc = st.median(r[5] for r in rows); dc = st.median(r[6] for r in rows)
print(f"CPU s per GB (one cold fill): image-cache {fc:.3f}   curl direct {dc:.3f}   ratio {st.median(r[5]/r[6] for r in rows if r[6]):.2f}")
print(f"$N cold clients at once:        {m:6.2f} s   $N direct at once:      {md:6.2f} s   ratio {st.median(r[2]/r[4] for r in rows):.2f}   origin GETs per round: {int(max(r[3] for r in rows))} (direct: $N)")
PY
