#!/usr/bin/env bash
# tests/e2e/runtimes.sh — one image-cache, every container runtime: containerd 1.6 (Debian 12), 1.7 (trixie)
# and 2.x (sid; both fetched with tests/debian-newer.sh, never installed), Docker 20.10 (registry-mirrors,
# no `ns`: the default upstream) and podman 4.3 (registries.conf mirror with a path prefix) pull one
# two-platform image from a Debian docker-registry through the cache. Everything runs in a private network
# namespace where only loopback exists and the registry's names resolve nowhere, so a pull can only succeed
# through the cache.
#
# Checks, per runtime: the pull yields the pushed index digest; across all runtimes the registry sees each
# blob GET exactly once (the first pull fills, the others are hits or links to the stored bytes); with the
# registry stopped, every runtime pulls the image again, from the cache alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
source tests/debian-newer.sh
e2e_start runtimes containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3 \
  curl:curl dockerd:docker.io podman:podman
NS=ic-e2e-rt
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
source tests/e2e/runtimes-scene.sh
ctr_pull() { # ctr_pull VERSION LABEL
  local t0; t0=$(date +%s.%N)
  if ctr_get "$1" registry.test/test/app:1 "$W/hosts"; then
    if [ "$GOT" = "$INDEX" ]; then pass "containerd $1: $2 ($(t "$t0") s)"; else fail "containerd $1: $2: digest '$GOT'"; fi
  else
    fail "containerd $1: $2: ctr pull failed"; tail -5 "$W/ctd-$1/pull.log"
  fi
}
docker_pull() { # docker_pull LABEL
  local t0; t0=$(date +%s.%N)
  if docker_get test/app:1; then
    case " $GOT" in *"@$INDEX "*) pass "docker: $1 ($(t "$t0") s)" ;; *) fail "docker: $1: RepoDigests '$GOT'" ;; esac
  else
    fail "docker: $1: pull failed"; tail -5 "$W/docker/pull.log"
  fi
}
podman_pull() { # podman_pull LABEL
  local t0; t0=$(date +%s.%N)
  if podman_get registry.test/test/app:1; then
    case " $GOT" in *"@$INDEX "*) pass "podman: $1 ($(t "$t0") s)" ;; *) fail "podman: $1: RepoDigests '$GOT'" ;; esac
  else
    fail "podman: $1: pull failed"; tail -5 "$W/podman/pull.log"
  fi
}

# --- every runtime through the cache -----------------------------------------------------------------------
for v in $VERSIONS; do ctr_pull "$v" "pull through the cache (hosts.toml, ns)"; done
docker_pull "pull through the cache (registry-mirrors, default upstream)"
podman_pull "pull through the cache (registries.conf path prefix)"

BLOBS=$(grep -o '"GET /v2/test/app/blobs/sha256:[0-9a-f]*' "$W/reg/log" | sort | uniq -c)
if [ -n "$BLOBS" ] && ! echo "$BLOBS" | awk '$1 != 1 {bad=1} END {exit !bad}'; then
  pass "the registry served each blob once for $(( $(echo "$VERSIONS" | wc -w) + 2 )) runtimes: $(echo "$BLOBS" | wc -l) blobs"
else
  fail "blob GETs at the registry:"; echo "$BLOBS"
fi
if tail -n +"$((PUSHED + 1))" "$W/reg/log" | grep '"[A-Z]* /v2/' | grep -qv '"image-cache/'; then
  fail "a runtime reached the registry itself:"; tail -n +"$((PUSHED + 1))" "$W/reg/log" | grep '"[A-Z]* /v2/' | grep -v '"image-cache/' | head -3
else
  pass "the registry saw only image-cache"
fi

# --- the registry goes away: every runtime still pulls, from the cache ------------------------------------
kill "${PID[registry]}"; wait "${PID[registry]}" 2>/dev/null || true; unset 'PID[registry]'
sleep 1.2 # past tag_ttl: the tag is revalidated, fails, and is served stale
for v in $VERSIONS; do ctr_pull "$v" "pull with the registry stopped"; done
docker_pull "pull with the registry stopped"
podman_pull "pull with the registry stopped"

e2e_done runtimes
