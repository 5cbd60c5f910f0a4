#!/usr/bin/env bash
# tests/e2e/dns.sh — the DNS interceptor of the real binary, asked with `dig`, and a two-node failover.
#
# Two network namespaces joined by a veth pair (10.99.0.1 and 10.99.0.2, nothing else reachable), one
# image-cache node in each, peers of each other, plus a dnsmasq in the first as the "internet" resolver for
# forwarded names (*.fwd.e2e → 192.0.2.7). Checks: UDP, TCP, +dnssec, ANY, NODATA, long names, forwarding,
# REFUSED for a source outside dns.allow; then failover: a node that dies leaves the other's answers within
# the fall time (3 polls of 1 s), and comes back after it rises again (2 polls). TLS passthrough: curl in the first
# namespace reaches an `openssl s_server` "origin" in the second through the first node's :443, verifying the
# origin's certificate end to end; a name that is not intercepted is closed.
# Needs root (namespaces, port 53). Installs dnsutils, dnsmasq-base and iproute2 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start e2e-dns dig:dnsutils dnsmasq:dnsmasq-base ip:iproute2 openssl:openssl curl:curl
A=ic-e2e-dns-a B=ic-e2e-dns-b
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT

e2e_netns $A $B
ip link add ic-e2e-va netns $A type veth peer name ic-e2e-vb netns $B
ip -n $A addr add 10.99.0.1/24 dev ic-e2e-va; ip -n $A link set ic-e2e-va up
ip -n $B addr add 10.99.0.2/24 dev ic-e2e-vb; ip -n $B link set ic-e2e-vb up
# A source address outside dns.allow, for the REFUSED check.
ip -n $A addr add 10.98.0.1/32 dev lo

ip netns exec $A dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.99.0.1 --port=5300 --address=/fwd.e2e/192.0.2.7 --local-ttl=60 \
  --pid-file="$W/dnsmasq.pid" --log-facility=/dev/null &
PID[dnsmasq]=$!

# The "real" store for images.metal-stack.io: a TLS server in the second namespace, with its own certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=images.metal-stack.io \
  -addext subjectAltName=DNS:images.metal-stack.io -keyout "$W/origin.key" -out "$W/origin.pem" 2>/dev/null
ip netns exec $B openssl s_server -accept 10.99.0.2:8443 -cert "$W/origin.pem" -key "$W/origin.key" \
  -www -quiet >/dev/null 2>&1 &
PID[origin]=$!

config() { # name self peer answer_order
  e2e_node_config "$W/$1" "$2" "$3" 'health_interval = "1s"' <<CONF
[http]
listen = ["$2:80"]
[dns]
listen = ["$2:53"]
upstreams = ["10.99.0.1:5300"]
allow = ["10.99.0.0/24", "127.0.0.0/8"]
answer_ttl = "30s"
answer_order = "$4"
[passthrough]
listen = ["$2:443"]
[[domains]]
name = "images.metal-stack.io"
origin = "https://10.99.0.2:8443"
[[domains]]
name = "github.com"
include_subdomains = true
CONF
}
config a 10.99.0.1 10.99.0.2 rotate
config b 10.99.0.2 10.99.0.1 self-first
start() { # node netns
  IMAGE_CACHE_LOG__LEVEL=warn ip netns exec "$2" "$BIN" serve --config "$W/$1/config.toml" >>"$W/$1/log" 2>&1 &
  PID[$1]=$!
}
start a $A
start b $B

qa() { ip netns exec $A dig +time=2 +tries=1 @10.99.0.1 "$@"; }
qb() { ip netns exec $B dig +time=2 +tries=1 @10.99.0.2 "$@"; }
answers() { "$@" +short | sort | tr '\n' ' ' | sed 's/ $//'; }
wait_for() { # seconds expected command...
  local deadline=$((SECONDS + $1)) want=$2; shift 2
  while ((SECONDS < deadline)); do
    [ "$(answers "$@" 2>/dev/null)" = "$want" ] && return 0
    sleep 0.25
  done
  return 1
}

# Both nodes up: each rises in the other's view after two good polls.
if wait_for 15 "10.99.0.1 10.99.0.2" qa images.metal-stack.io A; then pass "UDP A lists both healthy nodes"
else fail "UDP A: got '$(answers qa images.metal-stack.io A)'"; fi
# rotate (the default, node a): every node takes the first place in turn, so a rack spreads over the nodes.
firsts=$(for _ in 1 2 3 4; do qa images.metal-stack.io A +short | head -1; done | sort -u | tr '\n' ' ')
[ "$firsts" = "10.99.0.1 10.99.0.2 " ] && pass "rotate: both nodes lead in turn" || fail "rotate: first answers were '$firsts'"
# self-first (node b): this node always leads, the peers follow.
wait_for 15 "10.99.0.1 10.99.0.2" qb images.metal-stack.io A || fail "B does not list both nodes"
firsts=$(for _ in 1 2 3 4; do qb images.metal-stack.io A +short | head -1; done | sort -u | tr '\n' ' ')
[ "$firsts" = "10.99.0.2 " ] && pass "self-first: this node always first" || fail "self-first: first answers were '$firsts'"
[ "$(answers qa +tcp images.metal-stack.io A)" = "10.99.0.1 10.99.0.2" ] && pass "TCP A" || fail "TCP A"
out=$(qa +dnssec images.metal-stack.io A)
grep -q "status: NOERROR" <<<"$out" && grep -q "EDNS: version: 0" <<<"$out" && grep -q "10.99.0.2" <<<"$out" \
  && pass "+dnssec (EDNS answered, unsigned records)" || fail "+dnssec: $out"
out=$(qa images.metal-stack.io ANY)
grep -Eq "IN[[:space:]]+SOA[[:space:]]+ns.images.metal-stack.io" <<<"$out" && grep -Eq "IN[[:space:]]+A[[:space:]]+10.99.0.1" <<<"$out" \
  && pass "ANY at the apex: A and SOA" || fail "ANY: $out"
out=$(qa images.metal-stack.io MX)
grep -q "status: NOERROR" <<<"$out" && grep -q "ANSWER: 0, AUTHORITY: 1" <<<"$out" \
  && pass "MX: NODATA with SOA" || fail "MX: $out"
label=$(printf 'a%.0s' $(seq 1 58))
long="$label.$label.$label.$label.github.com"
[ "$(answers qa "$long" A)" = "10.99.0.1 10.99.0.2" ] && pass "long name (${#long} bytes) under include_subdomains" || fail "long intercepted name"
longf="$label.$label.$label.$label.fwd.e2e"
[ "$(answers qa "$longf" A)" = "192.0.2.7" ] && pass "long forwarded name" || fail "long forwarded name"
[ "$(answers qa host.fwd.e2e A)" = "192.0.2.7" ] && pass "forwarded to dns.upstreams" || fail "forwarded"
out=$(qa -b 10.98.0.1 images.metal-stack.io A || true)
grep -q "status: REFUSED" <<<"$out" && pass "REFUSED outside dns.allow (UDP)" || fail "refused UDP: $out"
out=$(qa -b 10.98.0.1 +tcp host.fwd.e2e A || true)
grep -q "status: REFUSED" <<<"$out" && pass "REFUSED outside dns.allow (TCP)" || fail "refused TCP: $out"

out=$(ip netns exec $A curl -sS --max-time 10 --cacert "$W/origin.pem" \
  --resolve images.metal-stack.io:443:10.99.0.1 https://images.metal-stack.io/ 2>&1 || true)
grep -q "s_server" <<<"$out" && pass "TLS passthrough to the origin, certificate verified end to end" \
  || fail "passthrough: $out"
if ip netns exec $A curl -sS -k --max-time 10 --resolve other.test:443:10.99.0.1 https://other.test/ >/dev/null 2>&1; then
  fail "a name that is not intercepted was passed through"
else pass "TLS for a name that is not intercepted is closed"; fi

# Failover: B dies → A stops handing it out after 3 failed polls; B comes back → listed again.
kill "${PID[b]}"; wait "${PID[b]}" 2>/dev/null || true; t0=$SECONDS
if wait_for 10 "10.99.0.1" qa images.metal-stack.io A; then pass "dead peer removed after $((SECONDS - t0)) s"
else fail "dead peer still listed: $(answers qa images.metal-stack.io A)"; fi
start b $B; t0=$SECONDS
if wait_for 15 "10.99.0.1 10.99.0.2" qa images.metal-stack.io A; then pass "peer back after $((SECONDS - t0)) s"
else fail "peer not back: $(answers qa images.metal-stack.io A)"; fi
kill "${PID[a]}"; wait "${PID[a]}" 2>/dev/null || true
if wait_for 10 "10.99.0.2" qb images.metal-stack.io A; then pass "the other node answers alone when the first dies"
else fail "B after A died: $(answers qb images.metal-stack.io A)"; fi

if ((FAILS)); then
  echo "--- node a log"; tail -20 "$W/a/log"; echo "--- node b log"; tail -20 "$W/b/log"
fi
e2e_done DNS
