#!/usr/bin/env bash
# tests/e2e/torture.sh — crash torture: CYCLES (default 20) times, the real binary is started, loaded with
# concurrent whole-file downloads, Range reads (cold and warm), a metal-api sync run and evictions (a
# store smaller than what is asked of it), and killed with -9 at a random moment. After every kill:
# the restart empties tmp/, `image-cache store verify` finds nothing corrupt, and every transfer a client
# saw complete — before the kill and after the restart — is byte for byte what the origin holds.
# Prints the figures docs/features.md quotes: cycles run, transfers checked, corrupt served (must be 0).
# Runs in a private network namespace (loopback only). Needs root. Installs nginx-light, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start torture nginx:nginx-light curl:curl python3:python3
CYCLES=${CYCLES:-20}
NS=ic-e2e-torture
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_ns() { ip netns exec $NS "$@"; }
e2e_netns $NS
printf '127.0.0.1 localhost\n127.0.0.1 files.test\n' >"/etc/netns/$NS/hosts"

# The origin: 16 files of 1–12 MB, throttled so kills land mid-transfer; three images with .md5 for the sync.
mkdir -p "$W/www/f" "$W/www/img"
for i in $(seq 1 16); do head -c $(((i % 12 + 1) * 1000000)) /dev/urandom >"$W/www/f/$i.bin"; done
for i in 1 2 3; do
  head -c $((i * 4000000)) /dev/urandom >"$W/www/img/os$i.img"
  md5sum "$W/www/img/os$i.img" | cut -d' ' -f1 >"$W/www/img/os$i.img.md5"
done
chmod -R a+rX "$W/www"
e2e_nginx $NS "server { listen 127.0.0.1:8081; root $W/www; limit_rate 12m; }"
cat >"$W/stub.py" <<'PY'
import http.server, json
IMAGES = [{"id": f"debian-13.0.2026010{i}", "url": f"http://files.test/img/os{i}.img"} for i in (1, 2, 3)]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = {"/metal/v1/image": IMAGES, "/metal/v1/partition": []}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
http.server.ThreadingHTTPServer(("127.0.0.1", 8082), H).serve_forever()
PY
in_ns python3 "$W/stub.py" &
PID[stub]=$!
echo secret >"$W/hmac"
mkdir -p "$W/node"
cat >"$W/node/config.toml" <<TOML
state_dir = "$W/node/state"
[cache]
max_size = "45MB"
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
enabled = true
jitter = "0s"
url = "http://127.0.0.1:8082/metal"
hmac_file = "$W/hmac"
min_images_per_name = 1
[log]
level = "warn"
TOML
start() {
  ip netns exec $NS "$BIN" serve --config "$W/node/config.toml" >>"$W/node/log" 2>&1 &
  PID[cache]=$!
  for _ in $(seq 100); do in_ns curl -sf http://127.0.0.1:8080/health >/dev/null && return; sleep 0.05; done
  echo "cache did not start"; tail "$W/node/log"; exit 1
}

# One client: a whole file or a range of it; records what it asked for when curl says it got it all.
cat >"$W/client.sh" <<'SH'
#!/bin/sh
# client.sh OUT_DIR ID PATH [RANGE]
out=$1; id=$2; path=$3; range=${4:-}
if [ -n "$range" ]; then
  curl -sf --max-time 30 -r "$range" -H 'Host: files.test' -o "$out/$id.body" "http://127.0.0.1:8080$path" && echo "$path $range" >"$out/$id.ok"
else
  curl -sf --max-time 30 -H 'Host: files.test' -o "$out/$id.body" "http://127.0.0.1:8080$path" && echo "$path -" >"$out/$id.ok"
fi
SH
chmod +x "$W/client.sh"
# Compares every completed transfer of a directory with the origin's bytes; prints "checked corrupt".
cat >"$W/check.py" <<'PY'
import os, sys
out, www = sys.argv[1], sys.argv[2]
checked = corrupt = 0
for name in sorted(os.listdir(out)):
    if not name.endswith(".ok"):
        continue
    path, rng = open(os.path.join(out, name)).read().split()
    data = open(www + path, "rb").read()
    if rng != "-":
        a, b = rng.split("-")
        data = data[int(a):int(b) + 1]
    got = open(os.path.join(out, name[:-3] + ".body"), "rb").read()
    checked += 1
    if got != data:
        corrupt += 1
        print(f"CORRUPT {path} {rng}: {len(got)} bytes served, {len(data)} expected", file=sys.stderr)
print(checked, corrupt)
PY

load() { # load DIR: 10 whole files and 8 ranges, all at once, in the background (sets LOAD_PIDS)
  local dir=$1 i f size a
  LOAD_PIDS=()
  for i in $(seq 1 10); do
    f=$((RANDOM % 16 + 1))
    in_ns "$W/client.sh" "$dir" "w$i" "/f/$f.bin" &
    LOAD_PIDS+=($!)
  done
  for i in $(seq 1 8); do
    f=$((RANDOM % 16 + 1)); size=$(((f % 12 + 1) * 1000000))
    a=$((RANDOM * 30 % (size - 70000)))
    in_ns "$W/client.sh" "$dir" "r$i" "/f/$f.bin" "$a-$((a + 65535))" &
    LOAD_PIDS+=($!)
  done
}

checked=0; corrupt=0; verify_bad=0; tmp_left=0
for cycle in $(seq 1 "$CYCLES"); do
  start
  dir="$W/c$cycle"; mkdir -p "$dir"
  load "$dir"
  (for _ in 1 2 3; do sleep 0.3; in_ns curl -s -o /dev/null -X POST http://127.0.0.1:8080/admin/store/gc; done) &
  gcpid=$!
  sleep "$(python3 -c 'import random; print(round(random.uniform(0.2, 2.5), 2))')"
  kill -9 "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'
  for p in "${LOAD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  wait "$gcpid" 2>/dev/null || true
  read -r c b < <(python3 "$W/check.py" "$dir" "$W/www")
  checked=$((checked + c)); corrupt=$((corrupt + b))
  # Restart: recovery empties tmp/; then the store is verified offline.
  start
  left=$(find "$W/node/state/tmp" -type f | wc -l); tmp_left=$((tmp_left + left))
  kill "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'
  if ! out=$("$BIN" store --config "$W/node/config.toml" verify 2>&1) || ! grep -q ' 0 corrupt' <<<"$out"; then
    verify_bad=$((verify_bad + 1)); echo "cycle $cycle: store verify: $out"
  fi
  # Every few cycles, and at the end: everything through the cache, compared whole.
  if ((cycle % 5 == 0 || cycle == CYCLES)); then
    start
    all="$W/all$cycle"; mkdir -p "$all"
    for f in $(seq 1 16); do in_ns "$W/client.sh" "$all" "f$f" "/f/$f.bin"; done
    for i in 1 2 3; do in_ns "$W/client.sh" "$all" "i$i" "/img/os$i.img"; done
    read -r c b < <(python3 "$W/check.py" "$all" "$W/www")
    checked=$((checked + c)); corrupt=$((corrupt + b))
    [ "$c" = 19 ] || fail "cycle $cycle: only $c of 19 objects could be fetched through the cache after the restart"
    kill "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'
  fi
  rm -rf "$dir"
done
echo "torture: $CYCLES cycles of kill -9, $checked completed transfers checked against the origin, $corrupt corrupt served, $verify_bad dirty verifies, $tmp_left temp files left after restarts"
[ "$corrupt" = 0 ] && pass "no transfer that completed ever carried a wrong byte ($checked checked)" || fail "$corrupt corrupt transfers served"
[ "$verify_bad" = 0 ] && pass "store verify clean after each of $CYCLES kills" || fail "$verify_bad dirty verifies"
[ "$tmp_left" = 0 ] && pass "tmp/ empty after every restart" || fail "$tmp_left temp files survived a restart"
grep -q 'panicked' "$W/node/log" && fail "the service panicked: $(grep -m1 panicked "$W/node/log")" || pass "no panic in $CYCLES cycles"
e2e_done torture
