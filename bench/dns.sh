#!/usr/bin/env bash
# bench/dns.sh — image-cache's DNS vs unbound on loopback, same run, same query files, dnsperf as the load.
#
# Both servers know the same intercepted names (unbound as local-data, image-cache as [[domains]]) and forward
# everything else to the same upstream (a dnsmasq answering *.fwd.bench with a 1 h TTL). Cases, each run as
# pairs (image-cache, unbound back to back, order alternating), REPEAT=3 pairs, DUR=10 s per run:
#   intercepted: A queries for the intercepted names            → qps
#   forwarded:   A queries for 200 forwarded names, pre-warmed  → qps (answers from each server's cache)
# Prints medians and the median of the per-pair ratios. Targets (issue 3): intercepted >= 1.0x unbound and
# >= 100k qps on the 2-core machine. dnsperf shares the cores with the server, so compare ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
REPEAT=${REPEAT:-3}
source bench/lib.sh
bench_start dnsbench
bench_need dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base dig:dnsutils
cargo build --release --locked -q
BIN=target/release/image-cache
UP=127.0.0.1:25399 IC=25353 UB=25354

dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
  --port="${UP#*:}" --address=/fwd.bench/192.0.2.1 --local-ttl=3600 --cache-size=10000 \
  --pid-file="$W/dnsmasq.pid" --log-facility=/dev/null & PIDS+=($!)

DOMAINS=(images.metal-stack.io github.com objects.githubusercontent.com releases.example.test)
{
  echo "state_dir = \"$W/state\""
  echo "[http]"; echo "listen = [\"127.0.0.1:25380\"]"
  echo "[dns]"; echo "listen = [\"127.0.0.1:$IC\"]"; echo "upstreams = [\"$UP\"]"
  echo "allow = [\"127.0.0.0/8\"]"
  echo "[nodes]"; echo "self = \"127.0.0.1\""
  for d in "${DOMAINS[@]}"; do echo "[[domains]]"; echo "name = \"$d\""; done
} > "$W/ic.toml"
IMAGE_CACHE_LOG__LEVEL=error "$BIN" serve --config "$W/ic.toml" 2>>"$W/ic.log" & ICPID=$!; PIDS+=("$ICPID")

{
  echo "server:"
  echo "  interface: 127.0.0.1@$UB"
  echo "  num-threads: 2"
  echo "  so-reuseport: yes"
  echo "  access-control: 127.0.0.0/8 allow"
  echo "  do-daemonize: no"
  echo "  chroot: \"\""
  echo "  username: \"\""
  echo "  pidfile: \"$W/unbound.pid\""
  echo "  use-syslog: no"
  echo "  logfile: \"\""
  echo "  verbosity: 0"
  echo "  do-not-query-localhost: no"
  echo "  msg-cache-size: 64m"
  echo "  rrset-cache-size: 128m"
  echo "  module-config: \"iterator\""
  for d in "${DOMAINS[@]}"; do
    echo "  local-zone: \"$d.\" static"
    echo "  local-data: \"$d. 30 IN A 127.0.0.1\""
  done
  echo "forward-zone:"
  echo "  name: \".\""
  echo "  forward-addr: ${UP%:*}@${UP#*:}"
} > "$W/unbound.conf"
unbound -d -c "$W/unbound.conf" & UBPID=$!; PIDS+=("$UBPID")
sleep 1.5

for d in "${DOMAINS[@]}"; do echo "$d A"; done > "$W/intercepted.txt"
for i in $(seq 1 200); do echo "host$i.fwd.bench A"; done > "$W/forwarded.txt"
# Sanity: both servers answer both kinds, and the forwarded names are cached before measuring.
for port in $IC $UB; do
  [ "$(dig +short -p "$port" @127.0.0.1 github.com A)" = 127.0.0.1 ] || { echo "port $port: bad intercepted answer" >&2; exit 1; }
  [ "$(dig +short -p "$port" @127.0.0.1 host1.fwd.bench A)" = 192.0.2.1 ] || { echo "port $port: bad forwarded answer" >&2; exit 1; }
  dnsperf -s 127.0.0.1 -p "$port" -d "$W/forwarded.txt" -n 1 >/dev/null
done

HZ=$(getconf CLK_TCK)
ticks() { local s; read -ra s < "/proc/$1/stat"; echo $((s[13] + s[14])); }
qps() { # port file pid → "queries_per_second server_cpu_seconds_per_100k_queries" (0 0 when dnsperf fails)
  local c0 c1 out
  c0=$(ticks "$3")
  out=$(dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$DUR" -c 20 -q 500 2>/dev/null \
    | awk '/Queries completed/ {done=$3} /Queries per second/ {q=$4} END {print (q ? q : 0), (done ? done : 0)}')
  c1=$(ticks "$3")
  echo "$out" | awk -v t=$((c1 - c0)) -v hz="$HZ" '{print $1, ($2 ? t / hz / $2 * 100000 : 0)}'
}
lost() { dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l 2 -c 20 -q 500 2>/dev/null | awk '/Queries lost/ {print $3}'; }

: > "$W/pairs"
for i in $(seq "$REPEAT"); do
  for case in intercepted forwarded; do
    if (( i % 2 )); then a=$(qps $IC "$W/$case.txt" "$ICPID"); b=$(qps $UB "$W/$case.txt" "$UBPID")
    else b=$(qps $UB "$W/$case.txt" "$UBPID"); a=$(qps $IC "$W/$case.txt" "$ICPID"); fi
    echo "$case $a $b" >> "$W/pairs"
  done
done
ic_rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$ICPID/status")

python3 - "$W/pairs" <<PY
import statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    name, a, acpu, b, bcpu = line.split()
    rows.setdefault(name, []).append((float(a), float(b), float(acpu), float(bcpu)))
print(f"machine: $(nproc) cores, $(uname -r); unbound $(unbound -V | awk 'NR==1 {print $2}'); dnsperf -c 20 -q 500; medians of $REPEAT pairs of {int($DUR)} s runs")
for name in ("intercepted", "forwarded"):
    r = rows[name]
    ic = st.median(x[0] for x in r); ub = st.median(x[1] for x in r)
    ratio = st.median(x[0] / x[1] for x in r if x[1])
    print(f"{name:12s} image-cache {ic:9.0f} qps   unbound {ub:9.0f} qps   ratio {ratio:.2f}")
    icc = st.median(x[2] for x in r); ubc = st.median(x[3] for x in r)
    cr = st.median(x[2] / x[3] for x in r if x[3])
    print(f"{'':12s} server CPU s per 100k queries: image-cache {icc:.3f}   unbound {ubc:.3f}   ratio {cr:.2f}")
print(f"image-cache peak RSS: {$ic_rss_kb/1024:.1f} MiB")
PY
