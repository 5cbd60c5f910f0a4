# shellcheck shell=bash
# bench/fill-scene.sh — sourced by bench/fill.sh and bench/profile-fill.sh: a SIZE_MB MiB file of random bytes
# served over TLS by nginx on 127.0.0.1:18443 (a CA of its own in $W/ca.pem, access log $W/access.log) and an
# image-cache that fills files.test from it, on 127.0.0.1:18080. Expects BIN and SIZE_MB; sets W and IC; defines
# fresh_cache (image-cache restarted on an empty state folder); installs an EXIT trap that cleans everything up.
source bench/lib.sh
bench_start fill
IC=
bench_stop() { if [ -n "$IC" ]; then kill "$IC" 2>/dev/null || true; fi; }

mkdir -p "$W/www"
head -c $((SIZE_MB * 1048576)) /dev/urandom >"$W/www/big.img"
chmod -R a+rX "$W/www"
# A CA and a leaf for localhost (webpki refuses a self-signed CA certificate used as the server's).
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ic-bench-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$W/key.pem" -out "$W/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$W/ext"
openssl x509 -req -in "$W/leaf.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 1 -extfile "$W/ext" \
  -out "$W/cert.pem" 2>/dev/null
cat >"$W/nginx.conf" <<CONF
daemon off;
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log $W/access.log;
  sendfile on;
  server {
    listen 127.0.0.1:18443 ssl;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    root $W/www;
  }
}
CONF
nginx -c "$W/nginx.conf" &
PIDS+=($!)
sleep 0.5
cat >"$W/ic.toml" <<TOML
state_dir = "$W/state"
[cache]
max_size = "100G"
[http]
listen = ["127.0.0.1:18080"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[upstream]
ca_file = "$W/ca.pem"
[[domains]]
name = "files.test"
origin = "https://localhost:18443"
TOML
fresh_cache() {
  [ -n "$IC" ] && { kill "$IC"; wait "$IC" 2>/dev/null || true; }
  rm -rf "$W/state"
  IMAGE_CACHE_LOG__LEVEL=warn "$BIN" serve --config "$W/ic.toml" >>"$W/ic.log" 2>&1 &
  IC=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/health >/dev/null && return; sleep 0.1; done
  echo "image-cache did not start"; exit 1
}
