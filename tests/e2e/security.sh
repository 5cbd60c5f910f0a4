#!/usr/bin/env bash
# tests/e2e/security.sh — a cache node and the machines of a partition that share its network, as a
# hostile tenant sees them: a node namespace (10.96.0.1), a tenant (10.96.0.50), an outsider the
# passthrough does not serve (10.96.0.60), and the internet (10.96.0.100: dnsmasq, an HTTPS origin),
# joined by a bridge in a hub namespace.
#
# Checks:
#   - admin without a token: a tenant may read (status, objects) under the node's own address, but
#     nothing that changes state (gc, pin, remove, sync) — 403; the same from the node's loopback works;
#   - DNS rebinding and CSRF: Host attacker.example → 421; Origin of another site, or null → 403;
#   - with http.admin_token_file: the tenant's POST without the token → 401, with it → 200;
#   - the node's own /etc/hosts never reaches a forwarded answer (its private entry for a name the
#     upstream says does not exist stays private);
#   - passthrough.allow: the outsider's TLS connection is closed and the origin never sees it, while the
#     tenant's reaches the origin end to end;
#   - include_subdomains: a subdomain the tenant names that resolves to the node's loopback (where an
#     internal HTTPS server listens) is refused for where it leads, and the internal server never sees it;
#   - an origin that answers in a content coding nobody asked for (Content-Encoding: gzip) gets a 502,
#     nothing stored;
#   - a hostile registry (nginx) typing a manifest and a tag listing text/html: 502, never served, and
#     every registry and file answer carries nosniff and a sandboxing CSP; `ns=hostile.test:443` and
#     `HOSTILE.test:0443` are the configured registry.
# Needs root. Installs dnsutils, dnsmasq-base, nginx-light, curl, openssl, iproute2 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start security dig:dnsutils dnsmasq:dnsmasq-base nginx:nginx-light curl:curl openssl:openssl ip:iproute2
P=ic-e2e-sec
declare -A ADDR=([node]=10.96.0.1 [tenant]=10.96.0.50 [outsider]=10.96.0.60 [internet]=10.96.0.100)
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_() { local n=$1; shift; ip netns exec $P-$n "$@"; }

e2e_netns $P-hub $P-node $P-tenant $P-outsider $P-internet
ip -n $P-hub link add br0 type bridge
ip -n $P-hub link set br0 up
for n in node tenant outsider internet; do
  ip link add sec-$n netns $P-hub type veth peer name eth0 netns $P-$n
  ip -n $P-hub link set sec-$n master br0
  ip -n $P-hub link set sec-$n up
  ip -n $P-$n addr add "${ADDR[$n]}/24" dev eth0
  ip -n $P-$n link set eth0 up
done
# The node's private hosts entry: a name the internet does not know.
printf '127.0.0.1 localhost\n10.66.66.66 secret.internal\n' >"/etc/netns/$P-node/hosts"

# The internet: a resolver (files.test → the origin, NXDOMAIN for the rest) and an HTTPS origin.
in_ internet dnsmasq --keep-in-foreground --pid-file= --port=53 --listen-address="${ADDR[internet]}" --bind-interfaces \
  --no-resolv --no-hosts --address=/internal.files.test/127.0.0.1 --address=/files.test/"${ADDR[internet]}" \
  --address=/#/ --log-facility=/dev/null &
PID[dns]=$!
e2e_cert "$W" cert files.test '*.files.test'
mkdir -p "$W/www/packed" "$W/www/v2/app/manifests" "$W/www/v2/app/tags"
echo "hello from the origin" >"$W/www/hello.txt"
echo "compressed bytes, not the file" >"$W/www/packed/data.txt"
echo '<html><script>fetch("/admin/status")</script></html>' >"$W/www/v2/app/manifests/page"
echo '<html><script>fetch("/admin/status")</script></html>' >"$W/www/v2/app/tags/list"
echo '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}' \
  >"$W/www/v2/app/manifests/good"
chmod -R a+rX "$W/www"
e2e_nginx "$P-internet" "server { listen ${ADDR[internet]}:443 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/cert.key; root $W/www;
  location /packed/ { add_header Content-Encoding gzip; }
  location /v2/app/manifests/page { default_type text/html; }
  location /v2/app/tags/ { default_type text/html; }
  location /v2/app/manifests/good { default_type application/vnd.oci.image.manifest.v1+json; } }" "$W/origin.log"
# Inside the node: an internal HTTPS server on its loopback that a tenant must never reach through the cache.
mkdir -p "$W/inside"; echo "internal secret" >"$W/inside/secret.txt"; chmod -R a+rX "$W/inside"
touch "$W/inside.log"
ip netns exec $P-node ip link set lo up
e2e_nginx "$P-node" "server { listen 127.0.0.1:443 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/cert.key; root $W/inside; }" \
  "$W/inside.log" inside

node_config() { # node_config [TOKEN_FILE]
  e2e_node_config "$W" "${ADDR[node]}" "" <<TOML
[http]
listen = ["0.0.0.0:80"]
${1:+admin_token_file = \"$1\"}
[dns]
listen = ["${ADDR[node]}:53"]
upstreams = ["${ADDR[internet]}:53"]
allow = ["10.96.0.0/24"]
[passthrough]
enabled = true
listen = ["${ADDR[node]}:443"]
allow = ["${ADDR[tenant]}/32"]
[upstream]
ca_file = "$W/ca.pem"
[[domains]]
name = "files.test"
include_subdomains = true
[registry.upstreams]
"hostile.test" = "https://files.test"
TOML
}
start_node() {
  ip netns exec $P-node "$BIN" serve --config "$W/config.toml" >>"$W/node.log" 2>&1 &
  PID[node]=$!
  for _ in $(seq 100); do in_ tenant curl -sf "http://${ADDR[node]}/health" >/dev/null && return; sleep 0.1; done
  echo "node did not start"; tail "$W/node.log"; exit 1
}
stop_node() { kill "${PID[node]}"; wait "${PID[node]}" 2>/dev/null || true; unset 'PID[node]'; }
code() { # code NS METHOD URL [curl args] → HTTP status
  local ns=$1 m=$2 url=$3; shift 3
  in_ "$ns" curl -s -o /dev/null -w '%{http_code}' -X "$m" "$@" "$url"
}
expect() { # expect WANT LABEL NS METHOD URL [curl args]
  local want=$1 label=$2; shift 2
  local got; got=$(code "$@")
  [ "$got" = "$want" ] && pass "$label ($got)" || fail "$label: got $got, want $want"
}

node_config
start_node
N="http://${ADDR[node]}"
in_ tenant curl -sf -H 'Host: files.test' -o /dev/null "$N/hello.txt" || true # something in the store (may 502: the origin is HTTPS on 443 only)

# --- admin without a token ---
expect 200 "tenant reads the status under the node's address" tenant GET "$N/admin/status"
expect 200 "tenant reads the object list" tenant GET "$N/admin/objects"
for route in "POST /admin/store/gc" "POST /admin/store/verify" "POST /admin/sync" \
  "POST /admin/objects/pin?key=file:files.test/hello.txt" "DELETE /admin/objects?key=file:files.test/hello.txt"; do
  expect 403 "tenant cannot ${route%% *} ${route#* } without a token" tenant "${route%% *}" "$N${route#* }"
done
expect 200 "the node's own loopback may gc without a token" node POST "http://127.0.0.1/admin/store/gc"
expect 421 "DNS rebinding: Host attacker.example gets nothing" tenant GET "$N/admin/objects" -H 'Host: attacker.example'
expect 421 "DNS rebinding: the status page under another name" tenant GET "$N/" -H 'Host: attacker.example'
expect 403 "CSRF: a cross-site Origin cannot post, even from the loopback" node POST "http://127.0.0.1/admin/store/gc" \
  -H 'Origin: http://attacker.example' -H 'Content-Type: text/plain'
expect 403 "CSRF: Origin null cannot post" node POST "http://127.0.0.1/admin/store/gc" -H 'Origin: null'
expect 200 "probes answer under any name" tenant GET "$N/health" -H 'Host: lb.example'
grep -q "answer only clients on this node's loopback" "$W/node.log" && pass "start-up says what an unset token means" ||
  fail "no start-up note about the missing token"

# --- DNS: the node's hosts file stays private ---
ans=$(in_ tenant dig +short +time=2 +tries=1 @"${ADDR[node]}" secret.internal A)
status=$(in_ tenant dig +time=2 +tries=1 @"${ADDR[node]}" secret.internal A | grep -o 'status: [A-Z]*')
[ -z "$ans" ] && [ "$status" = "status: NXDOMAIN" ] && pass "a forwarded name gets the upstream's NXDOMAIN, not the node's hosts entry" ||
  fail "forwarded answer for secret.internal: '$ans' ($status)"

# --- passthrough.allow ---
before=$(wc -l <"$W/origin.log")
in_ outsider curl -sk --max-time 5 --resolve "files.test:443:${ADDR[node]}" https://files.test/hello.txt >/dev/null && fail "the outsider got through" ||
  pass "the outsider's TLS connection is closed"
sleep 0.3
[ "$(wc -l <"$W/origin.log")" = "$before" ] && pass "the origin never saw the outsider" || fail "the origin saw the outsider"
got=$(in_ tenant curl -s --max-time 10 --cacert "$W/ca.pem" --resolve "files.test:443:${ADDR[node]}" https://files.test/hello.txt || true)
[ "$got" = "hello from the origin" ] && pass "the tenant reaches the origin through the passthrough, TLS end to end" ||
  fail "tenant through passthrough: '$got'"
m=$(in_ node curl -s http://127.0.0.1/metrics | awk '/^image_cache_passthrough_connections_total\{result="client"\}/ {print $2}')
[ "${m:-0}" -ge 1 ] && pass "refused passthrough clients counted ($m)" || fail "passthrough client refusals: '${m:-}'"

# --- the file front: a subdomain the tenant names, an origin that encodes ---
sleep 0.5 # the internal server is up
in_ node curl -sf --cacert "$W/ca.pem" --resolve internal.files.test:443:127.0.0.1 \
  https://internal.files.test/secret.txt >/dev/null && pass "the internal server answers on the node's loopback" ||
  fail "the internal server does not answer"
inside_before=$(wc -l <"$W/inside.log")
body=$(in_ tenant curl -s -w ' %{http_code}' -H 'Host: internal.files.test' "$N/secret.txt")
case "$body" in
*"loopback"*502) pass "a subdomain leading to the node's loopback is refused for where it leads" ;;
*) fail "internal.files.test: $body" ;;
esac
sleep 0.3
[ "$(wc -l <"$W/inside.log")" = "$inside_before" ] && pass "the internal server never saw the cache" ||
  fail "the cache reached the internal server"
body=$(in_ tenant curl -s -w ' %{http_code}' -H 'Host: files.test' "$N/packed/data.txt")
case "$body" in
*"Content-Encoding"*502) pass "a body in a coding nobody asked for is refused" ;;
*) fail "gzip origin: $body" ;;
esac
in_ node curl -s "http://127.0.0.1/admin/objects?prefix=file:files.test/packed" | grep -q '"key"' &&
  fail "the encoded body was stored" || pass "nothing stored from the encoding origin"
heads=$(in_ tenant curl -s -D - -o /dev/null -H 'Host: files.test' "$N/hello.txt" | tr -d '\r')
grep -qi '^x-content-type-options: nosniff' <<<"$heads" && grep -qi "^content-security-policy: .*sandbox" <<<"$heads" &&
  pass "file answers carry nosniff and a sandboxing CSP" || fail "file answer headers: $heads"

# --- a hostile registry ---
for path in "/v2/app/manifests/page?ns=hostile.test" "/v2/app/tags/list?ns=hostile.test"; do
  heads=$(in_ tenant curl -s -D - -o "$W/answer" "$N$path" | tr -d '\r')
  status=$(head -1 <<<"$heads" | awk '{print $2}')
  if [ "$status" = 502 ] && ! grep -qi '^content-type: text/html' <<<"$heads" && grep -q 'text/html' "$W/answer" &&
    grep -qi '^x-content-type-options: nosniff' <<<"$heads"; then
    pass "a registry answer typed text/html is refused ($path)"
  else
    fail "$path: $heads $(cat "$W/answer")"
  fi
done
for ns in hostile.test hostile.test:443 HOSTILE.test%3A0443; do
  heads=$(in_ tenant curl -s -D - -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$N/v2/app/manifests/good?ns=$ns" | tr -d '\r')
  if grep -q '^HTTP/1.1 200' <<<"$heads" && grep -qi '^oci-namespace: hostile.test$' <<<"$heads" &&
    grep -qi "^content-security-policy: .*sandbox" <<<"$heads"; then
    pass "ns=$ns is the configured registry"
  else
    fail "ns=$ns: $heads"
  fi
done
stop_node

# --- with a token ---
echo "s3cret-token" >"$W/token"
node_config "$W/token"
start_node
expect 401 "tenant POST without the token" tenant POST "$N/admin/store/gc"
expect 200 "tenant POST with the token" tenant POST "$N/admin/store/gc" -H 'Authorization: Bearer s3cret-token'
expect 401 "tenant read of the API without the token" tenant GET "$N/admin/objects"
expect 403 "the token does not open a cross-site request" tenant POST "$N/admin/store/gc" \
  -H 'Authorization: Bearer s3cret-token' -H 'Origin: http://attacker.example'
stop_node

e2e_done security
