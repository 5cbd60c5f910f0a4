#!/usr/bin/env bash
# tests/e2e/containerd.sh — Debian's containerd and ctr pull a multi-layer, two-platform image through
# image-cache from Debian's docker-registry (distribution), all on the loopback of a private network
# namespace (nothing else reachable, so a hostile `ns` could not reach anything either).
#
# Checks: a cold pull through the mirror yields the pushed index digest while containerd itself cannot
# reach the registry (the hosts.toml's `server` is a dead port: cache only); after `images rm` a second
# pull is served by the cache, and the registry's access log shows every blob fetched exactly once over
# both pulls; with docker-registry stopped a third pull still succeeds from the cache; with image-cache
# stopped, a `_default` hosts.toml (cache first, registry as fallback) still pulls from the registry.
# Needs root (network namespaces). Installs containerd, docker-registry, skopeo, python3 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start ctd containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3 curl:curl \
  ip:iproute2 bc:bc
source tests/e2e/oci-scene.sh

mkdir -p "$W/hosts-fallback"
REF=registry.test:5000/test/app:1


pulled "cold pull through the mirror" "$W/hosts" "$REF"
pulled "warm pull through the mirror" "$W/hosts" "$REF"

# Every blob of the amd64 image was fetched from the registry exactly once over both pulls.
BLOBS=$(grep -o '"GET /v2/test/app/blobs/sha256:[0-9a-f]*' "$W/reg/log" | sort | uniq -c)
if [ -n "$BLOBS" ] && ! echo "$BLOBS" | awk '$1 != 1 {bad=1} END {exit !bad}'; then
  pass "registry served each blob once: $(echo "$BLOBS" | wc -l) blobs"
else
  fail "blob GETs at the registry:"; echo "$BLOBS"
fi
if grep -q '"GET /v2/test/app/manifests/1 ' "$W/reg/log" && ! grep -q 'containerd' "$W/reg/log"; then
  pass "the registry saw only image-cache (no request from containerd)"
else
  fail "registry log shows containerd or no tag fetch"
fi
HITS=$(in_ns curl -s http://127.0.0.1:8080/metrics | awk '/^image_cache_registry_requests_total\{registry="registry.test:5000",kind="blob",result="hit"\}/ {print $2}')
if [ "${HITS:-0}" -ge 4 ] 2>/dev/null; then pass "blob hits counted: $HITS"; else fail "blob hits: '${HITS:-}'"; fi

# The registry goes away: the cache still has everything.
kill "${PID[registry]}"; wait "${PID[registry]}" 2>/dev/null || true; unset 'PID[registry]'
sleep 1.1 # past tag_ttl: the tag must be revalidated, fail, and be served stale
pulled "pull with docker-registry stopped (served stale by the cache)" "$W/hosts" "$REF"

# The cache goes away: containerd falls back to the registry (cache first, registry second).
start_registry
kill "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true; unset 'PID[cache]'
if in_ns curl -s -o /dev/null http://127.0.0.1:8080/health; then fail "image-cache still answers after kill"; fi
"$BIN" containerd-hosts --mirror http://127.0.0.1:8080 >"$W/hosts-fallback/hosts.toml.default"
mkdir -p "$W/hosts-fallback/_default"
mv "$W/hosts-fallback/hosts.toml.default" "$W/hosts-fallback/_default/hosts.toml"
pulled "pull with image-cache stopped falls back to the registry" "$W/hosts-fallback" 127.0.0.1:5000/test/app:1 --plain-http

[ "$FAILS" = 0 ] || { echo "--- image-cache log"; tail -30 "$W/ic.log"; }
e2e_done containerd
