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
e2e_netns $NS
in_ns() { ip netns exec $NS "$@"; }
# Programs that must keep the host's /sys (cgroups) run in the namespace's network only, in a private
# mount namespace where their fixed paths (/run/docker, /var/lib/containers) are scratch tmpfs.
in_net() { nsenter --net=/run/netns/$NS "$@"; }
wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.2; done
}
t() { printf '%.1f' "$(echo "$(date +%s.%N) - $1" | bc)"; }
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null

# --- the registry and the image ---------------------------------------------------------------------------
mkdir -p "$W/reg"
cat >"$W/reg/config.yml" <<YAML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $W/reg/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5000}
YAML
start_registry() {
  in_ns docker-registry serve "$W/reg/config.yml" >>"$W/reg/log" 2>&1 &
  PID[registry]=$!
  wait_for 10 in_ns curl -sf http://127.0.0.1:5000/v2/
}
start_registry
INDEX=$(python3 tests/e2e/oci-image.py "$W/img" 1 ${LAYERS_KIB:-1 4096 256})
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$W/policy.json"
in_ns skopeo --policy "$W/policy.json" copy -q --all --dest-tls-verify=false \
  "oci:$W/img:1" docker://127.0.0.1:5000/test/app:1
echo "pushed test/app:1 = $INDEX"
PUSHED=$(wc -l <"$W/reg/log")

# --- image-cache: the registry is "registry.test" (containerd's ns, podman's prefix) and "docker.io" ------
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
[registry.upstreams]
"registry.test" = "http://127.0.0.1:5000"
"docker.io" = "http://127.0.0.1:5000"
TOML
in_ns "$BIN" serve --config "$W/ic.toml" >>"$W/ic.log" 2>&1 &
PID[cache]=$!
wait_for 20 in_ns curl -sf http://127.0.0.1:8080/health

# --- containerd: 1.6 from Debian 12, 1.7 and 2.x from newer suites ----------------------------------------
mkdir -p "$W/hosts/registry.test"
cat >"$W/hosts/registry.test/hosts.toml" <<TOML
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:8080"]
  capabilities = ["pull", "resolve"]
TOML
declare -A CTD_BIN=([1.6]=/usr/bin)
if d=$(debian_newer trixie containerd); then CTD_BIN[1.7]=$d/usr/bin; else echo "SKIPPED containerd 1.7: not fetched"; fi
if d=$(debian_newer sid containerd); then CTD_BIN[2.x]=$d/usr/bin; else echo "SKIPPED containerd 2.x: not fetched"; fi
start_containerd() { # start_containerd VERSION: a private daemon, socket $W/ctd-VERSION/c.sock
  local v=$1 dir=$W/ctd-$1 bin=${CTD_BIN[$1]}
  mkdir -p "$dir"
  if [ "$v" = 2.x ]; then
    cat >"$dir/config.toml" <<TOML
version = 3
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs"]
[grpc]
  address = "$dir/c.sock"
[ttrpc]
  address = "$dir/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  else
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$dir/c.sock"
[ttrpc]
  address = "$dir/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  fi
  in_ns "$bin/containerd" --config "$dir/config.toml" >"$dir/log" 2>&1 &
  PID[containerd-$v]=$!
  wait_for 20 in_ns "$bin/ctr" --address "$dir/c.sock" version
  # Decide the snapshotter once every plugin has reported (2.x's transfer service unpacks only for the
  # snapshotters it was configured with: overlayfs by default).
  wait_for 20 sh -c "ip netns exec $NS '$bin/ctr' --address '$dir/c.sock' plugins ls | grep -q 'snapshotter.v1 *overlayfs'"
  SNAP[$v]=""
  in_ns "$bin/ctr" --address "$dir/c.sock" plugins ls | grep -q 'snapshotter.v1 *overlayfs.* ok' || SNAP[$v]=native
}
declare -A SNAP=()
ctr_pull() { # ctr_pull VERSION LABEL
  local v=$1 label=$2 dir=$W/ctd-$1 bin=${CTD_BIN[$1]} t0 snap=()
  [ -z "${SNAP[$v]}" ] || snap=(--snapshotter "${SNAP[$v]}")
  t0=$(date +%s.%N)
  if in_ns "$bin/ctr" --address "$dir/c.sock" images pull "${snap[@]}" --hosts-dir "$W/hosts" \
    registry.test/test/app:1 >"$dir/pull.log" 2>&1; then
    local got
    got=$(in_ns "$bin/ctr" --address "$dir/c.sock" images ls | awk '$1 == "registry.test/test/app:1" {print $3}')
    if [ "$got" = "$INDEX" ]; then pass "containerd $v: $label ($(t "$t0") s)"; else fail "containerd $v: $label: digest '$got'"; fi
  else
    fail "containerd $v: $label: ctr pull failed"; tail -5 "$dir/pull.log"
  fi
  in_ns "$bin/ctr" --address "$dir/c.sock" images rm --sync registry.test/test/app:1 >/dev/null 2>&1 || true
}

# --- Docker: registry-mirrors sends no ns, so the cache's default upstream (docker.io) answers ------------
DOCKER=/usr/bin/docker
export DOCKER_CONFIG=$W/docker-client
mkdir -p "$W/docker" "$DOCKER_CONFIG"
cat >"$W/docker/daemon.json" <<JSON
{"registry-mirrors": ["http://127.0.0.1:8080"], "insecure-registries": ["127.0.0.1:8080"]}
JSON
start_docker() {
  in_net unshare -m --propagation private sh -c "
    mount -t tmpfs none /run/docker 2>/dev/null || { mkdir -p /run/docker && mount -t tmpfs none /run/docker; }
    exec dockerd --config-file '$W/docker/daemon.json' --data-root '$W/docker/root' --exec-root '$W/docker/exec' \
      --pidfile '$W/docker/pid' -H 'unix://$W/docker/d.sock' -G root --containerd '$W/ctd-1.6/c.sock' \
      --storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
      --bridge=none --userland-proxy=false" >"$W/docker/log" 2>&1 &
  PID[dockerd]=$!
  wait_for 30 $DOCKER -H "unix://$W/docker/d.sock" version
}
docker_pull() { # docker_pull LABEL
  local t0 got
  t0=$(date +%s.%N)
  if $DOCKER -H "unix://$W/docker/d.sock" pull -q test/app:1 >"$W/docker/pull.log" 2>&1; then
    got=$($DOCKER -H "unix://$W/docker/d.sock" image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' test/app:1)
    case " $got" in *"@$INDEX "*) pass "docker: $1 ($(t "$t0") s)" ;; *) fail "docker: $1: RepoDigests '$got'" ;; esac
  else
    fail "docker: $1: pull failed"; tail -5 "$W/docker/pull.log"
  fi
  $DOCKER -H "unix://$W/docker/d.sock" rmi -f test/app:1 >/dev/null 2>&1 || true
}

# --- podman: a mirror with a path prefix ---------------------------------------------------------------------
mkdir -p "$W/podman"
cat >"$W/podman/registries.conf" <<TOML
unqualified-search-registries = []
[[registry]]
prefix = "registry.test"
location = "registry.test"
[[registry.mirror]]
location = "127.0.0.1:8080/registry.test"
insecure = true
TOML
cat >"$W/podman/containers.conf" <<TOML
[engine]
lock_type = "file"
events_logger = "none"
cgroup_manager = "cgroupfs"
TOML
cat >"$W/podman/storage.conf" <<TOML
[storage]
driver = "vfs"
graphroot = "$W/podman/root"
runroot = "$W/podman/run"
TOML
echo '{"auths":{}}' >"$W/podman/auth.json"
podman_() {
  in_net unshare -m --propagation private env CONTAINERS_REGISTRIES_CONF="$W/podman/registries.conf" \
    CONTAINERS_CONF="$W/podman/containers.conf" CONTAINERS_STORAGE_CONF="$W/podman/storage.conf" \
    REGISTRY_AUTH_FILE="$W/podman/auth.json" sh -c '
      mkdir -p /var/lib/containers && mount -t tmpfs none /var/lib/containers
      exec podman --root "$0/root" --runroot "$0/run" --tmpdir "$0/tmp" "$@"' "$W/podman" "$@"
}
podman_pull() { # podman_pull LABEL
  local t0 got
  t0=$(date +%s.%N)
  if podman_ pull -q registry.test/test/app:1 >"$W/podman/pull.log" 2>&1; then
    got=$(podman_ image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' registry.test/test/app:1)
    case " $got" in *"@$INDEX "*) pass "podman: $1 ($(t "$t0") s)" ;; *) fail "podman: $1: RepoDigests '$got'" ;; esac
  else
    fail "podman: $1: pull failed"; tail -5 "$W/podman/pull.log"
  fi
  podman_ rmi -f registry.test/test/app:1 >/dev/null 2>&1 || true
}

VERSIONS=$(printf '%s\n' "${!CTD_BIN[@]}" | sort)
for v in $VERSIONS; do start_containerd "$v"; done
start_docker || { fail "dockerd did not start"; tail -20 "$W/docker/log"; }

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
