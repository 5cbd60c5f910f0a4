#!/usr/bin/env bash
# tests/e2e/crash.sh — `kill -9` of the real binary in the middle of its three kinds of writes, then a
# restart: during a large fill (a client download from a throttled origin), during eviction (a store
# filled past cache.max_size), and during a metal-api sync download. After each: the restart empties tmp/,
# `image-cache store verify` finds every blob hashing to its name and every row's blob present (exit 0),
# and every object served afterwards hashes to what the origin holds.
# Runs in a private network namespace (loopback only). Needs root. Installs nginx-light, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start crash nginx:nginx-light curl:curl python3:python3
NS=ic-e2e-crash
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_ns() { ip netns exec $NS "$@"; }

e2e_netns $NS
# The origin's name, for the cache only.
printf '127.0.0.1 localhost\n127.0.0.1 files.test\n' >"/etc/netns/$NS/hosts"

# Origin: /slow/ is throttled to 4 MB/s so a kill lands mid-transfer; /fast/ is not.
mkdir -p "$W/www/slow" "$W/www/fast"
head -c 40000000 /dev/urandom >"$W/www/slow/big.img"
md5sum "$W/www/slow/big.img" | cut -d' ' -f1 >"$W/www/slow/big.img.md5"
for i in $(seq 1 12); do head -c 3000000 /dev/urandom >"$W/www/fast/f$i.img"; done
chmod -R a+rX "$W/www"
e2e_nginx $NS "server { listen 127.0.0.1:8081; root $W/www; location /slow/ { limit_rate 4m; } }"
# metal-api v1 stub: one image, on the throttled path.
cat >"$W/stub.py" <<'PY'
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = {"/metal/v1/image": [{"id": "debian-13.0.20260101", "url": "http://files.test:8081/slow/big.img"}],
                "/metal/v1/partition": []}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
http.server.HTTPServer(("127.0.0.1", 8082), H).serve_forever()
PY
in_ns python3 "$W/stub.py" &
PID[stub]=$!
echo secret >"$W/hmac"
sleep 0.5

config() { # config NAME MAX_SIZE SYNC
  mkdir -p "$W/$1"
  cat >"$W/$1/config.toml" <<TOML
state_dir = "$W/$1/state"
[cache]
max_size = "$2"
[http]
listen = ["127.0.0.1:8080"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[[domains]]
name = "files.test"
origin = "http://files.test:8081"
[sync]
enabled = $3
url = "http://127.0.0.1:8082/metal"
hmac_file = "$W/hmac"
jitter = "0s"
TOML
}
start() {
  ip netns exec $NS "$BIN" serve --config "$W/$1/config.toml" >>"$W/$1/log" 2>&1 &
  PID[cache]=$!
  for _ in $(seq 100); do in_ns curl -sf http://127.0.0.1:8080/health >/dev/null && return; sleep 0.1; done
  echo "cache did not start"; tail "$W/$1/log"; exit 1
}
crash() { kill -9 "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'; }
stop() { kill "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'; }
tmp_bytes() { du -sb "$W/$1/state/tmp" 2>/dev/null | cut -f1; }
wait_tmp() { # wait until a fill has written more than 2 MB
  for _ in $(seq 200); do [ "$(tmp_bytes "$1")" -gt 2000000 ] 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
after_crash() { # after_crash NAME WHAT: restart, check tmp/, stop, verify
  start "$1"
  local left; left=$(find "$W/$1/state/tmp" -type f | wc -l)
  [ "$left" = 0 ] && pass "$2: tmp/ empty after the restart" || fail "$2: $left files left in tmp/"
  stop
  if out=$("$BIN" store --config "$W/$1/config.toml" verify 2>&1); then
    pass "$2: store verify clean ($(echo "$out" | tr '\r' '\n' | tail -1))"
  else
    fail "$2: store verify: $out"
  fi
}
same() { # same URL_PATH FILE: served through the cache, equal to the origin's file
  [ "$(in_ns curl -sf -H 'Host: files.test' "http://127.0.0.1:8080$1" | md5sum | cut -d' ' -f1)" = "$(md5sum "$2" | cut -d' ' -f1)" ]
}

# 1. During a large fill.
config fill 1GB false
start fill
ip netns exec $NS curl -s -o /dev/null -H 'Host: files.test' http://127.0.0.1:8080/slow/big.img &
PID[client]=$!
if wait_tmp fill; then crash; pass "fill: killed with $(tmp_bytes fill) bytes in tmp/"; else fail "fill never started"; crash; fi
kill "${PID[client]}" 2>/dev/null || true; unset 'PID[client]'
after_crash fill "fill"
start fill
same /slow/big.img "$W/www/slow/big.img" && pass "fill: big.img served whole and correct after the restart" || fail "fill: big.img differs"
stop

# 2. During eviction: 12 × 3 MB into a 20 MB store, killed while keys are being evicted.
config evict 20MB false
start evict
for i in $(seq 1 12); do in_ns curl -sf -o /dev/null -H 'Host: files.test' "http://127.0.0.1:8080/fast/f$i.img"; done
crash
pass "evict: killed after 36 MB went into a 20 MB store"
after_crash evict "evict"
start evict
ok=1; for i in $(seq 1 12); do same "/fast/f$i.img" "$W/www/fast/f$i.img" || ok=0; done
[ $ok = 1 ] && pass "evict: all 12 files served correctly after the restart" || fail "evict: a file differs"
stop
"$BIN" store --config "$W/evict/config.toml" gc >/dev/null
bytes=$(du -sb "$W/evict/state/blobs" | cut -f1)
[ "$bytes" -le 20000000 ] && pass "evict: $bytes bytes of blobs after gc (max 20 MB)" || fail "evict: $bytes bytes of blobs"

# 3. During a metal-api sync download.
config sync 1GB true
start sync
if wait_tmp sync; then crash; pass "sync: killed with $(tmp_bytes sync) bytes in tmp/"; else fail "sync download never started"; crash; fi
config sync 1GB false # restart without a new sync run, so tmp/ shows only what recovery left
after_crash sync "sync"
start sync
same /slow/big.img "$W/www/slow/big.img" && pass "sync: image served whole and correct after the restart" || fail "sync: image differs"
stop

e2e_done crash
