#!/usr/bin/env bash
# bench/ab-hits.sh A B — two image-cache binaries (say, the last commit's and yours) serving the same hits side by
# side, in interleaved rounds so both see the same machine: per round, each serves a 1 GiB hit to wrk with 4
# connections and a 100 KB hit with 50 (DUR seconds each, default 8; ROUNDS default 3), and the script prints
# throughput, requests/s and the server's CPU seconds per GB, then each server's peak RSS. A change to the hit path
# is judged by the rounds it wins, not by one pair: this machine's noise is ±10%.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] && [ -x "$1" ] && [ -x "$2" ] || { echo "usage: bench/ab-hits.sh BINARY_A BINARY_B"; exit 2; }
A=$1; B=$2; DUR=${DUR:-8}; ROUNDS=${ROUNDS:-3}
source bench/lib.sh
bench_need nginx:nginx-light wrk:wrk
bench_start ab
mkdir -p "$W/www"; head -c 1073741824 /dev/urandom > "$W/www/big.bin"; head -c 100000 /dev/urandom > "$W/www/small.bin"
cat > "$W/nginx.conf" <<CONF
worker_processes 1; pid $W/nginx.pid; error_log $W/nginx.err; events { worker_connections 256; }
http { access_log off; sendfile on; server { listen 127.0.0.1:18191; root $W/www; } }
CONF
nginx -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)
start() { # name bin port
  cat > "$W/$1.toml" <<CONF
state_dir = "$W/$1"
[cache]
max_size = "4G"
[http]
listen = ["127.0.0.1:$3"]
[dns]
enabled = false
[passthrough]
enabled = false
[[domains]]
name = "bench.test"
origin = "http://127.0.0.1:18191"
CONF
  IMAGE_CACHE_LOG__LEVEL=error "$2" serve --config "$W/$1.toml" 2>>"$W/$1.log" & PIDS+=($!); echo $! > "$W/$1.pid"; }
start a "$A" 18180; start b "$B" 18181; sleep 1
for p in 18180 18181; do for f in big.bin small.bin; do curl -sSf -H 'Host: bench.test' "http://127.0.0.1:$p/$f" -o /dev/null; done; done; sleep 1
HZ=$(getconf CLK_TCK)
cpu() { read -ra s < "/proc/$1/stat"; echo $((s[13] + s[14])); }
run() { # pid port conns path
  local c0; c0=$(cpu "$1"); local out; out=$(wrk -t2 -c"$3" -d"${DUR}s" -H 'Host: bench.test' "http://127.0.0.1:$2$4"); local c1; c1=$(cpu "$1")
  python3 - "$out" "$((c1-c0))" "$HZ" "$DUR" <<'PY'
import re,sys
out,t,hz,dur=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4])
rps=float(re.search(r"Requests/sec:\s+([\d.]+)",out).group(1))
m=re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)",out); bps=float(m.group(1))*{"B":1,"KB":1024,"MB":1024**2,"GB":1024**3}[m.group(2)]
gb=bps*dur/1e9; print(f"{bps/1e6:.0f}MB/s {rps:.0f}req/s {t/hz/gb:.3f}cpu-s/GB")
PY
}
declare -A PORT=([a]=18180 [b]=18181)
for r in $(seq "$ROUNDS"); do
  for x in a b; do echo "round $r $x big:   $(run "$(cat "$W/$x.pid")" "${PORT[$x]}" 4 /big.bin)"; done
  for x in b a; do echo "round $r $x small: $(run "$(cat "$W/$x.pid")" "${PORT[$x]}" 50 /small.bin)"; done
done
for x in a b; do echo "$x VmHWM: $(grep VmHWM "/proc/$(cat "$W/$x.pid")/status")"; done
