# tests/e2e/oci-scene.sh — sourced by tests/e2e/containerd.sh, container.sh, upstream-trouble.sh and
# bench/registry.sh: a private network namespace with docker-registry on 127.0.0.1:5000 holding test/app:1 (a
# two-platform image written by oci-image.py, layer sizes in KiB from $LAYERS_KIB), image-cache on
# 127.0.0.1:8080 with that registry as "registry.test:5000" (not started with OCI_SCENE_NO_CACHE=1: the caller
# runs its own, as the container test does), and a standalone containerd. Expects what `e2e_start` of
# tests/e2e/lib.sh sets (BIN, W); sets NS, SOCK, INDEX, SNAP, the cache-only hosts dir $W/hosts and the helpers
# below (push, start_cache, ctr_, pulled); installs an EXIT trap that cleans everything up (e2e_cleanup, with
# containerd's mounts undone). OCI_SCENE_UPSTREAM puts something else in front of the registry (the fault
# proxy of upstream-trouble.sh); OCI_SCENE_REGISTRY_KEYS adds lines to image-cache's [registry].
# shellcheck shell=bash

: "${W:?tests/e2e/oci-scene.sh is sourced after e2e_start of tests/e2e/lib.sh}"
declare -gA PID # tests/e2e/lib.sh's; said again for shellcheck, which reads this file alone
NS=${NS:-ic-e2e-ctd}
SOCK=$W/c.sock
e2e_undo() { umount -R "$W/ctd/root" 2>/dev/null || true; }
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_ns() { ip netns exec $NS "$@"; }
wait_for() { # wait_for SECONDS CMD...: retry every 0.1 s
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

e2e_netns $NS

# --- the registry, and an image pushed to it -------------------------------------------------------
mkdir -p "$W/reg"
cat >"$W/reg/config.yml" <<YAML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $W/reg/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:5000}
YAML
start_registry() {
  ip netns exec $NS docker-registry serve "$W/reg/config.yml" >>"$W/reg/log" 2>&1 &
  PID[registry]=$!
  wait_for 10 in_ns curl -sf http://127.0.0.1:5000/v2/
}
start_registry

INDEX=$(python3 tests/e2e/oci-image.py "$W/img" 1 ${LAYERS_KIB:-1 30720 256})
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$W/policy.json"
push() { # push LAYOUT:TAG REPO:TAG — an OCI layout's image, every platform, to the registry
  in_ns skopeo --policy "$W/policy.json" copy -q --all --dest-tls-verify=false "oci:$1" "docker://127.0.0.1:5000/$2"
}
push "$W/img:1" test/app:1
echo "pushed test/app:1 = $INDEX"

# --- image-cache ------------------------------------------------------------------------------------
cat >"$W/ic.toml" <<TOML
state_dir = "$W/ic-state"
[http]
listen = ["127.0.0.1:8080"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[registry]
tag_ttl = "1s"
${OCI_SCENE_REGISTRY_KEYS:-}
[registry.upstreams]
"registry.test:5000" = "${OCI_SCENE_UPSTREAM:-http://127.0.0.1:5000}"
TOML
start_cache() {
  ip netns exec $NS "$BIN" serve --config "$W/ic.toml" >>"$W/ic.log" 2>&1 &
  PID[cache]=$!
  wait_for 20 in_ns curl -sf http://127.0.0.1:8080/health
}
[ -n "${OCI_SCENE_NO_CACHE:-}" ] || start_cache

# Cache only ($W/hosts, for `pulled … "$W/hosts" registry.test:5000/…`): the registry as written in the
# reference is a dead port, so containerd cannot pass by falling back; every request the registry sees
# comes from image-cache.
mkdir -p "$W/hosts/registry.test:5000"
cat >"$W/hosts/registry.test:5000/hosts.toml" <<TOML
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:8080"]
  capabilities = ["pull", "resolve"]
TOML

# --- containerd -------------------------------------------------------------------------------------
mkdir -p "$W/ctd"
cat >"$W/ctd/config.toml" <<TOML
version = 2
root = "$W/ctd/root"
state = "$W/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
TOML
ip netns exec $NS containerd --config "$W/ctd/config.toml" >"$W/ctd/log" 2>&1 &
# shellcheck disable=SC2034 # stopped by e2e_cleanup
PID[containerd]=$!
wait_for 20 in_ns ctr --address "$SOCK" version
SNAP=()
in_ns ctr --address "$SOCK" plugins ls | grep -q 'overlayfs.*ok' || SNAP=(--snapshotter native)
ctr_() { in_ns ctr --address "$SOCK" "$@"; }
pulled() { # pulled LABEL HOSTS REF [ctr args]: PASS when ctr pulls the pushed index digest; the image is removed after
  local label=$1 hosts=$2 ref=$3; shift 3
  local t0
  t0=$(date +%s.%N)
  if ctr_ images pull "${SNAP[@]}" "$@" --hosts-dir "$hosts" "$ref" >"$W/pull.log" 2>&1; then
    local got
    got=$(ctr_ images ls | awk -v r="$ref" '$1 == r {print $3}')
    if [ "$got" = "$INDEX" ]; then
      pass "$label ($(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)") s, digest $got)"
    else
      fail "$label: image digest '$got', pushed $INDEX"
    fi
  else
    fail "$label: ctr pull failed"; tail -5 "$W/pull.log"
  fi
  ctr_ images rm --sync "$ref" >/dev/null 2>&1 || true
}

