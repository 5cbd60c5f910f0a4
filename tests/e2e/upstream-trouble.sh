#!/usr/bin/env bash
# tests/e2e/upstream-trouble.sh — a registry in trouble never costs the partition what it holds, and a
# metered registry's budget is spent on live pulls first. Debian's docker-registry behind a test proxy
# (tests/e2e/registry-proxy.py: faults, Docker Hub's rate-limit headers and request counts on demand),
# image-cache with tag_ttl 1s and deleted_grace 12s, and Debian's containerd pulling with ctr, all in a
# private network namespace.
#
# Checks: a pulled tag is pulled again by containerd, with the pushed digest, after its revalidation was
# answered 401, 403, 429 (Retry-After), 503 (Retry-After), 404 and 410 — each a real HEAD to the registry;
# the 401 shows as the registry's rejected access in /admin/status and the metric; after the grace the
# unpinned tag follows the registry's 404, a pinned one is still pulled; with `ratelimit-remaining` below
# the reserve a prefetch sends no manifest or blob request and reports why, a tag is served without
# revalidating, and a live pull of an image the cache does not hold succeeds. Prints what each kind of
# pull costs in requests Docker Hub counts (manifest GETs).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start trouble containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3 \
  curl:curl ip:iproute2 bc:bc
# shellcheck disable=SC2034 # read by tests/e2e/oci-scene.sh
OCI_SCENE_NO_CACHE=1 LAYERS_KIB="1 64" NS=ic-e2e-trouble OCI_SCENE_UPSTREAM=http://127.0.0.1:5001 \
  OCI_SCENE_REGISTRY_KEYS='deleted_grace = "12s"'
source tests/e2e/oci-scene.sh
APP_INDEX=$INDEX
push "$W/img:1" test/app:pinned
NEW_INDEX=$(python3 tests/e2e/oci-image.py "$W/img2" 1 1 64)
push "$W/img2:1" test/new:1
push "$W/img2:1" test/other:1

ip netns exec "$NS" python3 tests/e2e/registry-proxy.py 5001 5000 &
# shellcheck disable=SC2034 # stopped by e2e_cleanup
PID[proxy]=$!
wait_for 10 in_ns curl -sf http://127.0.0.1:5001/v2/
proxy() { in_ns curl -sf -X POST "http://127.0.0.1:5001/_proxy/$1" >/dev/null; }
count() { in_ns curl -sf http://127.0.0.1:5001/_proxy/counts | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', 0))"; }
admin() { local path=$1; shift; in_ns curl -sf "$@" "http://127.0.0.1:8080$path"; }
json() { # json EXPR: EXPR over the JSON on stdin as v; r is registry.test:5000 of /admin/status
  python3 -c "import json,sys; v=json.load(sys.stdin)
r=next((x for x in v.get('registries', []) if x['registry'] == 'registry.test:5000'), None)
print(eval(sys.argv[1]))" "$1"
}
metric() { admin /metrics | awk -v m="$1" '$1 == m {print $2}'; }

start_cache
REF=registry.test:5000/test/app:1
PINNED=registry.test:5000/test/app:pinned

g0=$(count "GET manifest")
pulled "cold pull through the mirror" "$W/hosts" "$REF"
COLD_GETS=$(($(count "GET manifest") - g0))
pulled "cold pull of a second tag" "$W/hosts" "$PINNED"
if admin "/admin/objects/pin?key=oci:registry.test:5000/test/app:pinned" -X POST >/dev/null; then
  pass "pinned test/app:pinned"
else
  fail "cannot pin test/app:pinned"
fi
g0=$(count "GET manifest"); h0=$(count "HEAD manifest")
pulled "warm pull within tag_ttl" "$W/hosts" "$REF"
WARM="$(($(count "GET manifest") - g0)) GET, $(($(count "HEAD manifest") - h0)) HEAD"
sleep 1.2
g0=$(count "GET manifest"); h0=$(count "HEAD manifest")
pulled "pull past tag_ttl (revalidated)" "$W/hosts" "$REF"
REVALIDATED="$(($(count "GET manifest") - g0)) GET, $(($(count "HEAD manifest") - h0)) HEAD"

for case in 401 403 429:1 503:1 404 410; do
  status=${case%%:*}; retry=${case#*:}; [ "$retry" = "$case" ] && retry=
  proxy "fault?path=/v2/test/app/manifests/1&status=$status${retry:+&retry_after=$retry}"
  if [ "$status" = 404 ]; then
    proxy "fault?path=/v2/test/app/manifests/pinned&status=404"
    sleep 1.2
    pulled "pinned tag pulled after a 404 revalidation" "$W/hosts" "$PINNED"
  fi
  sleep 1.2 # past tag_ttl, the quiet spell after a failure and the Retry-After
  h0=$(count "HEAD manifest")
  pulled "pull after a $status revalidation (served from the store)" "$W/hosts" "$REF"
  [ "$status" = 404 ] && DELETED_AT=$SECONDS
  asked=$(($(count "HEAD manifest") - h0))
  if [ "$asked" -ge 1 ]; then pass "the $status was the registry's answer to $asked revalidation HEAD(s)"
  else fail "no revalidation reached the registry in the $status round"; fi
  if [ "$status" = 401 ]; then
    got=$(admin /admin/status | json 'r["credentials_rejected"], r["last_rejection"]["status"]')
    if [ "$got" = "(True, 401)" ]; then pass "/admin/status: the registry rejects the cache's access (401)"
    else fail "/admin/status registries: $got"; fi
  fi
done
AUTH=$(metric 'image_cache_upstream_auth_failures_total{registry="registry.test:5000"}')
if [ "${AUTH:-0}" = 2 ]; then pass "image_cache_upstream_auth_failures_total = 2 (the 401 and the 403)"
else fail "auth failures: '${AUTH:-}'"; fi
DEL=$(admin "/admin/objects?prefix=oci:registry.test:5000/test/app:1" | json '[o.get("upstream_deleted_at") for o in v["objects"] if o["key"].endswith("app:1")][0] is not None')
if [ "$DEL" = True ]; then pass "/admin/objects marks the tag upstream_deleted_at"; else fail "upstream_deleted_at: $DEL"; fi

# Past the grace (counted from the first 404): the unpinned tag follows the registry, the pinned one stays.
proxy "fault?path=/v2/test/app/manifests/1&status=404"
sleep $((DELETED_AT + 14 - SECONDS))
if ctr_ images pull "${SNAP[@]}" --hosts-dir "$W/hosts" "$REF" >"$W/pull.log" 2>&1; then
  fail "the unpinned tag is still pulled past deleted_grace"
else
  pass "past deleted_grace the unpinned tag follows the registry's 404"
fi
pulled "past deleted_grace the pinned tag is still pulled" "$W/hosts" "$PINNED"

# The budget: below the reserve only live pulls of content the cache lacks spend it.
proxy clear
proxy "ratelimit?limit=100&remaining=10"
sleep 1.2
pulled "pull that reads the budget (10 of 100 left)" "$W/hosts" "$PINNED"
LOW=$(admin /admin/status | json 'r["budget"]["low"]')
[ "$LOW" = True ] && pass "/admin/status: budget below the reserve" || fail "budget low: $LOW"
REMAINING=$(metric 'image_cache_registry_ratelimit_remaining{registry="registry.test:5000"}')
[ "$REMAINING" = 10 ] && pass "image_cache_registry_ratelimit_remaining = 10" || fail "remaining gauge: '$REMAINING'"
sleep 1.2
m0=$(($(count "GET manifest") + $(count "HEAD manifest") + $(count "GET blob") + $(count "HEAD blob")))
pulled "pull past tag_ttl below the reserve (no revalidation)" "$W/hosts" "$PINNED"
REPORT=$(admin "/admin/registry/prefetch?wait=true&image=registry.test:5000/test/other:1" -X POST)
m1=$(($(count "GET manifest") + $(count "HEAD manifest") + $(count "GET blob") + $(count "HEAD blob")))
if [ "$m1" = "$m0" ]; then pass "no manifest or blob request below the reserve (revalidation and prefetch)"
else fail "$((m1 - m0)) manifest/blob requests below the reserve"; fi
DEFERRED=$(echo "$REPORT" | json 'v["images"][0]["deferred"], "ratelimit_reserve" in v["images"][0]["message"]')
[ "$DEFERRED" = "(True, True)" ] && pass "the prefetch reports the image deferred, with the reason" \
  || fail "prefetch report: $REPORT"
INDEX=$NEW_INDEX
g0=$(count "GET manifest")
pulled "live pull of an image the cache does not hold, below the reserve" "$W/hosts" registry.test:5000/test/new:1
NEW_GETS=$(($(count "GET manifest") - g0))

echo "budget: a cold pull costs $COLD_GETS manifest GET(s) (the kind Docker Hub counts; blobs and HEADs are not" \
  "counted), $NEW_GETS below the reserve; a warm pull within tag_ttl $WARM; a revalidation past tag_ttl $REVALIDATED"
INDEX=$APP_INDEX
[ "$FAILS" = 0 ] || { echo "--- image-cache log"; tail -30 "$W/ic.log"; }
e2e_done upstream-trouble
