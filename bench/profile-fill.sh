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
W=$(mktemp -d /tmp/ic-profile-fill.XXXXXX)
chmod 755 "$W"
PIDS=()
IC=
cleanup() { for p in "${PIDS[@]}" $IC; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v perf >/dev/null || { echo "bench/profile-fill.sh needs perf (Debian: linux-perf)"; exit 1; }
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked -q
BIN=$PWD/target/release/image-cache

# A CA and a server certificate for localhost (rustls refuses a self-signed end-entity certificate).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$W/key.pem" -out "$W/req.pem" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$W/ext"
openssl x509 -req -in "$W/req.pem" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 -extfile "$W/ext" \
  -out "$W/cert.pem" 2>/dev/null
mkdir -p "$W/www"
head -c $((SIZE_MB * 1048576)) /dev/urandom >"$W/www/big.img"
cat >"$W/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 64; }
http { access_log off; sendfile on;
  server { listen 127.0.0.1:18444 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; root $W/www; } }
CONF
nginx -c "$W/nginx.conf" & PIDS+=($!)
sleep 0.5
cat >"$W/ic.toml" <<TOML
state_dir = "$W/state"
[cache]
max_size = "100G"
[http]
listen = ["127.0.0.1:18082"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[upstream]
ca_file = "$W/ca.pem"
[[domains]]
name = "files.test"
origin = "https://localhost:18444"
TOML
cat "$W/www/big.img" >/dev/null # the origin's page cache is warm
fresh() {
  [ -n "$IC" ] && { kill "$IC"; wait "$IC" 2>/dev/null || true; }
  rm -rf "$W/state"
  IMAGE_CACHE_LOG__LEVEL=warn "$BIN" serve --config "$W/ic.toml" >>"$W/ic.log" 2>&1 &
  IC=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18082/health >/dev/null && return; sleep 0.1; done
  echo "image-cache did not start"; exit 1
}
fill() { curl -sf -H 'Host: files.test' -o /dev/null -w '%{time_total}\n' http://127.0.0.1:18082/big.img; }

times=()
for i in $(seq "$ROUNDS"); do
  fresh
  perf record -F 999 -g -p "$IC" -o "$W/fill-$i.data" >/dev/null 2>&1 & rec=$!
  sleep 0.3
  times+=("$(fill)")
  kill -INT "$rec"; wait "$rec" 2>/dev/null || true
done
fresh
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
