#!/usr/bin/env bash
# bench/http.sh — image-cache vs nginx (sendfile on) serving the same files on loopback, measured in one run.
#
# Measures, with wrk (keep-alive, DUR=10 s per run, REPEAT=3 pairs of runs per case, medians reported):
#   large: one 1 GiB file, 4 connections         → throughput (MB/s), server CPU seconds per GB
#   small: a 100 KB file, 50 connections         → requests/s
#   rss:   the 1 GiB file, 100 connections       → peak RSS of image-cache (VmHWM)
# and prints ratios image-cache/nginx. image-cache serves hits from its store (warmed first through a fill from
# nginx acting as origin). Both servers and wrk share this machine's cores, so compare ratios, not absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
REPEAT=${REPEAT:-3}
source bench/lib.sh
bench_start bench
bench_need nginx:nginx-light wrk:wrk
cargo build --release --locked -q
BIN=target/release/image-cache

mkdir -p "$W/www"
head -c 1073741824 /dev/urandom > "$W/www/big.bin"
head -c 100000 /dev/urandom > "$W/www/small.bin"

cat > "$W/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:18081; root $W/www; }
}
CONF
nginx -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)

cat > "$W/ic.toml" <<CONF
state_dir = "$W/state"
[cache]
max_size = "4G"
[http]
listen = ["127.0.0.1:18080"]
[dns]
enabled = false
[[domains]]
name = "bench.test"
origin = "http://127.0.0.1:18081"
CONF
IMAGE_CACHE_LOG__LEVEL=error "$BIN" serve --config "$W/ic.toml" 2>>"$W/ic.log" & IC=$!; PIDS+=("$IC")
sleep 1
for f in big.bin small.bin; do curl -sf -H 'Host: bench.test' "http://127.0.0.1:18080/$f" -o /dev/null; done
sleep 1

cpu_of() { # utime+stime in clock ticks, summed over the given pids
  local t=0; for p in "$@"; do read -ra s < "/proc/$p/stat"; t=$((t + s[13] + s[14])); done; echo $t; }
nginx_pids() { pgrep -f "nginx -c $W/nginx.conf"; pgrep -P "$(cat "$W/nginx.pid")"; }
HZ=$(getconf CLK_TCK)

# run NAME URL_BASE CONNS PATH PIDS... → prints "bytes_per_s req_per_s cpu_s_per_gb"
run() {
  local base=$1 conns=$2 path=$3; shift 3
  local c0; c0=$(cpu_of "$@")
  local out; out=$(wrk -t2 -c"$conns" -d"${DUR}s" -H 'Host: bench.test' --latency "$base$path")
  local c1; c1=$(cpu_of "$@")
  python3 - "$out" "$((c1 - c0))" "$HZ" "$DUR" <<'PY'
import re, sys
out, ticks, hz, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
bps = float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]
cpu = ticks / hz
gb = bps * dur / 1e9
print(f"{bps:.0f} {rps:.1f} {cpu / gb if gb else 0:.3f}")
PY
}

# Pairs of runs, image-cache and nginx back to back (order alternating), so that drift of this shared machine
# hits both sides of a ratio alike; the reported ratio is the median of the pairs' ratios.
: > "$W/pairs"
mapfile -t NGINX < <(nginx_pids)
for i in $(seq "$REPEAT"); do
  for case in "large 4 /big.bin" "small 50 /small.bin"; do
    read -r name conns path <<<"$case"
    if (( i % 2 )); then
      ic=$(run http://127.0.0.1:18080 "$conns" "$path" "$IC"); ng=$(run http://127.0.0.1:18081 "$conns" "$path" "${NGINX[@]}")
    else
      ng=$(run http://127.0.0.1:18081 "$conns" "$path" "${NGINX[@]}"); ic=$(run http://127.0.0.1:18080 "$conns" "$path" "$IC")
    fi
    echo "$name $ic $ng" >> "$W/pairs"
  done
done
run http://127.0.0.1:18080 100 /big.bin $IC >/dev/null
ic_rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$IC/status")

python3 - "$W/pairs" <<PY
import statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    name, *v = line.split()
    rows.setdefault(name, []).append(list(map(float, v)))  # ic bps rps cpu, ng bps rps cpu
def med(name, i): return st.median(r[i] for r in rows[name])
def ratio(name, i, j): return st.median(r[i] / r[j] for r in rows[name] if r[j])
print(f"machine: $(nproc) cores, $(uname -r); nginx $(nginx -v 2>&1 | sed 's/.*\///'); wrk; medians of $REPEAT pairs of {int($DUR)} s runs")
print(f"large file (1 GiB, 4 conns):   image-cache {med('large',0)/1e6:8.0f} MB/s   nginx {med('large',3)/1e6:8.0f} MB/s   ratio {ratio('large',0,3):.2f}")
print(f"server CPU s per GB:           image-cache {med('large',2):8.3f}        nginx {med('large',5):8.3f}        ratio {ratio('large',2,5):.2f}")
print(f"small file (100 KB, 50 conns): image-cache {med('small',1):8.0f} req/s nginx {med('small',4):8.0f} req/s ratio {ratio('small',1,4):.2f}")
print(f"server CPU s per GB (100 KB):  image-cache {med('small',2):8.3f}        nginx {med('small',5):8.3f}        ratio {ratio('small',2,5):.2f}")
print(f"image-cache peak RSS after 100 concurrent 1 GiB downloads: {$ic_rss_kb/1024:.1f} MiB")
PY
