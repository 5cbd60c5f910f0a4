#!/usr/bin/env bash
# bench/admin.sh — what watching the cache costs, and how the admin views scale with the index.
#
#   observed: hits of a 100 KB file (wrk, 50 connections, DUR s) while VIEWERS status pages refresh their live
#             part every 2 s and a CLI polls /admin/fills every 0.5 s, against the same server unobserved,
#             REPEAT pairs back to back, the order alternating; the median of the per-pair ratios
#             observed/unobserved is the target (>= 0.95); every pair is printed because this machine is noisy
#   index:    with OBJECTS keys in the index: the first status page (a full index scan), later ones (cached
#             scan), every object through GET /admin/objects pages of 1000, and `image-cache store ls` of all of
#             them through the admin API
# nginx is only the origin here. Loopback only; both sides share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8}
REPEAT=${REPEAT:-5}
VIEWERS=${VIEWERS:-5}
OBJECTS=${OBJECTS:-20000}
source bench/lib.sh
bench_start bench-admin
bench_need nginx:nginx-light wrk:wrk
cargo build --release --locked -q
BIN=$PWD/target/release/image-cache

mkdir -p "$W/www"
head -c 100000 /dev/urandom > "$W/www/small.bin"
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:18091; root $W/www;
    location /obj/ { default_type application/octet-stream; return 200 "one of many small objects\n"; }
  }
}
CONF
nginx -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)

cat > "$W/ic.toml" <<CONF
state_dir = "$W/state"
[http]
listen = ["127.0.0.1:18090"]
[dns]
enabled = false
[passthrough]
enabled = false
[[domains]]
name = "bench.test"
origin = "http://127.0.0.1:18091"
CONF
IMAGE_CACHE_LOG__LEVEL=warn "$BIN" serve --config "$W/ic.toml" & PIDS+=($!)
for _ in $(seq 50); do curl -sf http://127.0.0.1:18090/health >/dev/null && break; sleep 0.1; done
curl -sf -H 'Host: bench.test' http://127.0.0.1:18090/small.bin -o /dev/null

# OBJECTS keys, filled through the cache by 8 keep-alive clients.
python3 - "$OBJECTS" <<'PY'
import http.client, sys, threading
n = int(sys.argv[1])
def work(start):
    c = http.client.HTTPConnection("127.0.0.1", 18090, timeout=30)
    for i in range(start, n, 8):
        c.request("GET", f"/obj/{i:08d}.bin", headers={"Host": "bench.test"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
sleep 6 # hit counts are flushed every 5 s

ms() { python3 -c 'import sys,time; t=time.time(); import subprocess; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(f"{(time.time()-t)*1000:.0f}")' "$@"; }
cold=$(ms curl -sf http://127.0.0.1:18090/)
warm=()
for _ in 1 2 3 4 5; do warm+=("$(ms curl -sf http://127.0.0.1:18090/status/live)"); done
listed=$(python3 - <<'PY'
import json, time, urllib.parse, urllib.request
t, n, cursor = time.time(), 0, None
while True:
    q = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
    page = json.load(urllib.request.urlopen("http://127.0.0.1:18090/admin/objects?" + urllib.parse.urlencode(q)))
    n += len(page["objects"]); cursor = page["next_cursor"]
    if cursor is None: break
print(n, f"{(time.time()-t)*1000:.0f}")
PY
)
cli_ms=$(ms "$BIN" store --config "$W/ic.toml" ls --limit 10000000)

# Observed vs unobserved hits, in pairs.
watchers() { # VIEWERS pages refreshing /status/live every 2 s, one CLI polling /admin/fills every 0.5 s
  python3 - "$VIEWERS" "$1" <<'PY' &
import sys, threading, time, urllib.request
viewers, dur = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + dur
def poll(path, every):
    while time.time() < end:
        urllib.request.urlopen("http://127.0.0.1:18090" + path).read()
        time.sleep(every)
threads = [threading.Thread(target=poll, args=("/status/live", 2.0)) for _ in range(viewers)]
threads.append(threading.Thread(target=poll, args=("/admin/fills", 0.5)))
[t.start() for t in threads]; [t.join() for t in threads]
PY
}
rps() { wrk -t2 -c50 -d"${DUR}s" -H 'Host: bench.test' http://127.0.0.1:18090/small.bin | awk '/Requests\/sec/ {print $2}'; }
: > "$W/pairs"
for i in $(seq "$REPEAT"); do
  if (( i % 2 )); then
    plain=$(rps); watchers $((DUR + 1)); observed=$(rps); wait $!
  else
    watchers $((DUR + 1)); observed=$(rps); wait $!; plain=$(rps)
  fi
  echo "$plain $observed" >> "$W/pairs"
done

python3 - "$W/pairs" "$cold" "${warm[*]}" "$listed" "$cli_ms" <<PY
import statistics as st, sys
pairs = [list(map(float, l.split())) for l in open(sys.argv[1])]
warm = list(map(float, sys.argv[3].split()))
n, list_ms = sys.argv[4].split()
print(f"machine: $(nproc) cores, $(uname -r); wrk; medians of $REPEAT pairs of $DUR s runs")
print(f"100 KB hits, 50 conns: unobserved {st.median(p[0] for p in pairs):8.0f} req/s   watched by $VIEWERS pages + 1 CLI {st.median(p[1] for p in pairs):8.0f} req/s   ratio {st.median(p[1]/p[0] for p in pairs):.2f}")
print("  pairs (unobserved, observed req/s): " + ", ".join(f"({a:.0f}, {b:.0f})" for a, b in pairs))
print(f"index of $OBJECTS objects: first status page {float(sys.argv[2]):.0f} ms (full scan), live refresh {st.median(warm):.0f} ms (median of 5)")
print(f"GET /admin/objects, all {n} objects in pages of 1000: {float(list_ms):.0f} ms; image-cache store ls through the admin API: {float(sys.argv[5]):.0f} ms")
PY
