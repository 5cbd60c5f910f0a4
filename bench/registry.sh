#!/usr/bin/env bash
# bench/registry.sh — `ctr images pull` of a multi-layer image through image-cache vs straight from
# docker-registry, measured in the same run on one machine (network namespace, loopback).
#
# Per round (REPEAT rounds, medians reported): direct (containerd → docker-registry, --plain-http),
# cold (a fresh, empty image-cache fills from docker-registry while streaming to containerd), warm (the
# same image-cache again, everything stored). containerd's content store is emptied before every pull,
# so each pull transfers and unpacks the whole image. Prints warm/direct and cold/direct (targets: warm
# <= 1.0, cold <= 1.1). LAYERS_KIB sets the layer sizes (default 1 KiB, 96 MiB, 32 MiB, 256 KiB per
# platform). Needs root (network namespace), like tests/e2e/containerd.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/registry.sh needs root (network namespaces)"; exit 1; }
REPEAT=${REPEAT:-5}
export LAYERS_KIB=${LAYERS_KIB:-1 98304 32768 256}
source tests/e2e/lib.sh
source bench/lib.sh # median
e2e_start bench-ctd containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3 \
  curl:curl bc:bc
NS=ic-bench-ctd
source tests/e2e/oci-scene.sh

mkdir -p "$W/hosts-direct"

timed_pull() { # timed_pull HOSTS REF [args] → seconds on stdout
  local hosts=$1 ref=$2; shift 2
  ctr_ images rm --sync "$ref" >/dev/null 2>&1 || true
  local t0 t1
  t0=$(date +%s.%N)
  ctr_ images pull "${SNAP[@]}" "$@" --hosts-dir "$hosts" "$ref" >/dev/null 2>&1 || { echo "pull of $ref failed" >&2; exit 1; }
  t1=$(date +%s.%N)
  ctr_ images rm --sync "$ref" >/dev/null 2>&1 || true
  echo "$t1 - $t0" | bc
}

D=() C=() WM=() RC=() RW=()
timed_pull "$W/hosts-direct" 127.0.0.1:5000/test/app:1 --plain-http >/dev/null # warm the registry's page cache
for i in $(seq "$REPEAT"); do
  d=$(timed_pull "$W/hosts-direct" 127.0.0.1:5000/test/app:1 --plain-http)
  kill -0 "${PID[cache]}" 2>/dev/null || { echo "image-cache died:"; tail -20 "$W/ic.log"; exit 1; }
  kill "${PID[cache]}"; wait "${PID[cache]}" 2>/dev/null || true
  rm -rf "$W/ic-state"; start_cache
  c=$(timed_pull "$W/hosts" registry.test:5000/test/app:1)
  w=$(timed_pull "$W/hosts" registry.test:5000/test/app:1)
  D+=("$d") C+=("$c") WM+=("$w")
  RC+=("$(echo "scale=3; $c / $d" | bc)") RW+=("$(echo "scale=3; $w / $d" | bc)")
  printf 'round %d: direct %.3f s, cold %.3f s, warm %.3f s\n' "$i" "$d" "$c" "$w"
done
MB=$(du -sm "$W/img/blobs" | awk '{print $1}')
echo "image: two platforms, layers ${LAYERS_KIB} KiB each (layout ${MB} MB); containerd $(containerd --version | awk '{print $3}'), REPEAT=$REPEAT"
printf '| pull | median time | ratio to direct (median of per-round ratios) |\n| --- | --- | --- |\n'
printf '| direct from docker-registry | %.3f s | 1.00 |\n' "$(printf '%s\n' "${D[@]}" | median)"
printf '| cold, through image-cache | %.3f s | %.2f |\n' "$(printf '%s\n' "${C[@]}" | median)" "$(printf '%s\n' "${RC[@]}" | median)"
printf '| warm, through image-cache | %.3f s | %.2f |\n' "$(printf '%s\n' "${WM[@]}" | median)" "$(printf '%s\n' "${RW[@]}" | median)"
