#!/usr/bin/env bash
# tests/e2e/failover.sh — two image-cache nodes as peers, each in its own network namespace, a client and an
# origin in theirs, all joined by a bridge in a hub namespace (10.98.0.0/24; nothing else reachable).
# Checks: both nodes are listed in DNS answers; a miss on node B is filled from node A (peer fill) without a
# second origin request; node B stops → node A answers only itself within the fall time (3 polls of 1 s) and
# downloads keep working; node B comes back → listed again after the rise time (2 polls).
# Needs root. Installs dnsutils, dnsmasq-base, nginx-light, curl, iproute2 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start failover dig:dnsutils dnsmasq:dnsmasq-base nginx:nginx-light curl:curl ip:iproute2
P=ic-e2e-fo
declare -A ADDR=([hub]="" [a]=10.98.0.11 [b]=10.98.0.12 [client]=10.98.0.20 [origin]=10.98.0.30)
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_() { local n=$1; shift; ip netns exec $P-$n "$@"; }
answers() { in_ client dig +short +time=1 +tries=1 @"$1" files.test A | sort | tr '\n' ' ' | sed 's/ $//'; }
wait_answers() { # wait_answers SERVER WANT TIMEOUT_S → seconds taken, or fails
  local t0=$SECONDS
  until [ "$(answers "$1")" = "$2" ]; do
    ((SECONDS - t0 < $3)) || return 1
    sleep 0.2
  done
  echo $((SECONDS - t0))
}

e2e_netns $P-hub $P-a $P-b $P-client $P-origin
ip -n $P-hub link add br0 type bridge
ip -n $P-hub link set br0 up
for n in a b client origin; do
  ip link add fo-$n netns $P-hub type veth peer name eth0 netns $P-$n
  ip -n $P-hub link set fo-$n master br0
  ip -n $P-hub link set fo-$n up
  ip -n $P-$n addr add "${ADDR[$n]}/24" dev eth0
  ip -n $P-$n link set eth0 up
done

# The origin: nginx with two files, and the "internet" resolver for files.test.
mkdir -p "$W/www"
head -c 8000000 /dev/urandom >"$W/www/one.img"
head -c 8000000 /dev/urandom >"$W/www/two.img"
chmod -R a+rX "$W/www"
e2e_nginx "$P-origin" "server { listen ${ADDR[origin]}:80; root $W/www; }" "$W/origin.log"
in_ origin dnsmasq --keep-in-foreground --pid-file= --port=53 --listen-address="${ADDR[origin]}" --bind-interfaces \
  --no-resolv --no-hosts --address=/files.test/"${ADDR[origin]}" --log-facility=/dev/null &
PID[dns]=$!

node_config() { # node_config SELF PEER
  e2e_node_config "$W/$1" "${ADDR[$1]}" "${ADDR[$2]}" 'health_interval = "1s"' <<TOML
[http]
listen = ["${ADDR[$1]}:80"]
[dns]
listen = ["${ADDR[$1]}:53"]
upstreams = ["${ADDR[origin]}:53"]
allow = ["10.98.0.0/24"]
[passthrough]
enabled = false
[[domains]]
name = "files.test"
origin = "http://files.test"
TOML
}
start_node() {
  ip netns exec $P-$1 "$BIN" serve --config "$W/$1/config.toml" >>"$W/$1/log" 2>&1 &
  PID[$1]=$!
  for _ in $(seq 100); do in_ client curl -sf "http://${ADDR[$1]}/health" >/dev/null && return; sleep 0.1; done
  echo "node $1 did not start"; tail "$W/$1/log"; exit 1
}
node_config a b; node_config b a
start_node a; start_node b
BOTH="${ADDR[a]} ${ADDR[b]}"

if t=$(wait_answers "${ADDR[a]}" "$BOTH" 10); then pass "both nodes listed by node A after ${t} s (rise: 2 polls)"; else fail "node A lists '$(answers "${ADDR[a]}")'"; fi
if wait_answers "${ADDR[b]}" "$BOTH" 10 >/dev/null; then pass "both nodes listed by node B"; else fail "node B lists '$(answers "${ADDR[b]}")'"; fi

# Peer fill: node A fills one.img from the origin; node B then fills it from node A.
get() { in_ client curl -sf -H 'Host: files.test' "http://$1/$2" | md5sum | cut -d' ' -f1; }
want=$(md5sum "$W/www/one.img" | cut -d' ' -f1)
[ "$(get "${ADDR[a]}" one.img)" = "$want" ] && [ "$(get "${ADDR[b]}" one.img)" = "$want" ] &&
  pass "one.img through A, then through B, both correct" || fail "one.img content"
n=$(grep -c '"GET /one.img ' "$W/origin.log" || true)
[ "$n" = 1 ] && pass "node B's miss was filled from node A: the origin was asked once" || fail "origin asked $n times for one.img"

# Node B stops: node A stops listing it within the fall time, and downloads keep working.
kill "${PID[b]}"; wait "${PID[b]}" 2>/dev/null || true; unset 'PID[b]'
if t=$(wait_answers "${ADDR[a]}" "${ADDR[a]}" 8); then pass "node B gone from node A's answers after ${t} s (fall: 3 polls of 1 s)"; else fail "node A still lists '$(answers "${ADDR[a]}")'"; fi
ip=$(answers "${ADDR[a]}")
want2=$(md5sum "$W/www/two.img" | cut -d' ' -f1)
[ "$(get "$ip" two.img)" = "$want2" ] && pass "download through the answered node works with B down" || fail "two.img with B down"

# Node B comes back and is listed again.
start_node b
if t=$(wait_answers "${ADDR[a]}" "$BOTH" 10); then pass "node B listed again after ${t} s"; else fail "node B not listed again: '$(answers "${ADDR[a]}")'"; fi

e2e_done failover
