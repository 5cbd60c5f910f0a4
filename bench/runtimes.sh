#!/usr/bin/env bash
# bench/runtimes.sh — every container runtime pulling one image warm through image-cache vs straight from a
# Debian docker-registry, measured in the same run on one machine (the scene of tests/e2e/runtimes.sh: a
# network namespace with only loopback; containerd 1.6 / 1.7 / 2.x, Docker 20.10, podman 4.3).
#
# Per runtime and round (REPEAT rounds, medians reported): direct (the runtime asks the registry itself:
# ctr --plain-http, docker pull 127.0.0.1:5000/…, podman --tls-verify=false) and warm (through the cache, the
# way tests/e2e/runtimes.sh points each runtime at it, everything stored; tag_ttl 1s, so most warm pulls
# revalidate the tag with one HEAD). The image is removed after every pull, so each pull transfers and
# unpacks the whole image. Prints warm/direct per runtime (target <= 1.0). LAYERS_KIB sets the layer sizes
# (default 1 KiB, 32 MiB, 8 MiB, 256 KiB per platform). Needs root, like tests/e2e/runtimes.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/e2e/lib.sh
source tests/debian-newer.sh
REPEAT=${REPEAT:-3}
export LAYERS_KIB=${LAYERS_KIB:-1 32768 8192 256}
e2e_start bench-runtimes containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3 \
  curl:curl dockerd:docker.io podman:podman bc:bc
NS=ic-bench-rt
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
source tests/e2e/runtimes-scene.sh
mkdir -p "$W/hosts-direct"

timed() { # timed CMD... → seconds on stdout; the pull must succeed
  local t0 t1
  t0=$(date +%s.%N)
  "$@" || { echo "bench: '$*' failed" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# runtime label → "direct command|warm command"
declare -A PULL=()
ORDER=()
for v in $VERSIONS; do
  PULL["containerd $v"]="ctr_get $v 127.0.0.1:5000/test/app:1 $W/hosts-direct --plain-http|ctr_get $v registry.test/test/app:1 $W/hosts"
  ORDER+=("containerd $v")
done
PULL[docker]="docker_get 127.0.0.1:5000/test/app:1|docker_get test/app:1"
PULL[podman]="podman_get 127.0.0.1:5000/test/app:1 --tls-verify=false|podman_get registry.test/test/app:1"
ORDER+=(docker podman)

declare -A D=() WM=() R=()
for rt in "${ORDER[@]}"; do
  IFS='|' read -r direct warm <<<"${PULL[$rt]}"
  $direct # the registry's page cache and the runtime's first-run work
  $warm   # the cache fills (the first runtime) or links
  for i in $(seq "$REPEAT"); do
    d=$(timed $direct)
    w=$(timed $warm)
    kill -0 "${PID[cache]}" 2>/dev/null || { echo "image-cache died:"; tail -20 "$W/ic.log"; exit 1; }
    D[$rt]+="$d " WM[$rt]+="$w " R[$rt]+="$(echo "scale=3; $w / $d" | bc) "
    printf 'round %d %s: direct %.3f s, warm %.3f s\n' "$i" "$rt" "$d" "$w"
  done
done
# Every direct pull transferred the image: the largest layer was fetched from the registry each time.
BIG=$(ls -S "$W/img/blobs/sha256" | head -1)
GETS=$(grep "\"GET /v2/test/app/blobs/sha256:$BIG" "$W/reg/log" | grep -vc '"image-cache/' || true)
WANT=$(( ${#ORDER[@]} * (REPEAT + 1) ))
[ "$GETS" = "$WANT" ] || { echo "bench: the registry served the largest layer to runtimes $GETS times, not $WANT"; exit 1; }
MB=$(du -sm "$W/img/blobs" | awk '{print $1}')
echo "image: two platforms (one pulled), layers ${LAYERS_KIB} KiB each (layout ${MB} MB); REPEAT=$REPEAT"
printf '| runtime | direct from docker-registry | warm through image-cache | warm / direct (median of per-round ratios) |\n| --- | --- | --- | --- |\n'
for rt in "${ORDER[@]}"; do
  printf '| %s | %.3f s | %.3f s | %.2f |\n' "$rt" \
    "$(tr ' ' '\n' <<<"${D[$rt]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${WM[$rt]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${R[$rt]}" | grep . | median)"
done
