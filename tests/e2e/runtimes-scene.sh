# shellcheck shell=bash
# tests/e2e/runtimes-scene.sh — sourced by tests/e2e/runtimes.sh and bench/runtimes.sh after e2e_start and
# with NS set: a private network namespace (only loopback) holding a Debian docker-registry (127.0.0.1:5000,
# the image test/app:1 pushed, two platforms, LAYERS_KIB), one image-cache (127.0.0.1:8080; the registry is
# "registry.test" and "docker.io" to it), containerd 1.6 / 1.7 / 2.x, dockerd and podman, each with private
# state. Sets INDEX (the pushed index digest), VERSIONS (the containerd versions started), PUSHED (registry log
# lines before any pull). Pull helpers, each returning the pull's exit status and removing the image after:
#   ctr_get VERSION REF HOSTS_DIR [ARGS...]   docker_get REF   podman_get REF [ARGS...]
# and the accessors ctr_ VERSION ARGS..., docker_ ARGS..., podman_ ARGS...
declare -gA PID # tests/e2e/lib.sh's; said again for shellcheck, which reads this file alone
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
# shellcheck disable=SC2034 # for the caller: the registry log lines before any runtime pulled
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
  # overlayfs when it comes up (2.x's transfer service unpacks only for the snapshotters it was configured
  # with: overlayfs by default); a plugin's status can read other than ok for a moment after start-up.
  SNAP[$v]=native
  if wait_for 10 sh -c "ip netns exec $NS '$bin/ctr' --address '$dir/c.sock' plugins ls | grep -q 'snapshotter.v1 *overlayfs.* ok'"; then
    SNAP[$v]=""
  fi
}
declare -A SNAP=()
ctr_() { local v=$1; shift; in_ns "${CTD_BIN[$v]}/ctr" --address "$W/ctd-$v/c.sock" "$@"; }
ctr_get() { # ctr_get VERSION REF HOSTS_DIR [ARGS...]
  local v=$1 ref=$2 hosts=$3 snap=() rc=0; shift 3
  [ -z "${SNAP[$v]}" ] || snap=(--snapshotter "${SNAP[$v]}")
  ctr_ "$v" images pull "${snap[@]}" --hosts-dir "$hosts" "$@" "$ref" >"$W/ctd-$v/pull.log" 2>&1 || rc=$?
  GOT=$(ctr_ "$v" images ls | awk -v r="$ref" '$1 == r {print $3}')
  ctr_ "$v" images rm --sync "$ref" >/dev/null 2>&1 || true
  return $rc
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
  # shellcheck disable=SC2034 # stopped by e2e_cleanup
  PID[dockerd]=$!
  wait_for 30 $DOCKER -H "unix://$W/docker/d.sock" version
}
docker_() { $DOCKER -H "unix://$W/docker/d.sock" "$@"; }
docker_get() { # docker_get REF
  local rc=0
  docker_ pull -q "$1" >"$W/docker/pull.log" 2>&1 || rc=$?
  GOT=$(docker_ image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$1" 2>/dev/null || true)
  docker_ rmi -f "$1" >/dev/null 2>&1 || true
  return $rc
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
source tests/e2e/podman.sh
podman_private_setup "$W/podman"
podman_() { PODMAN_WRAP=in_net podman_private "$W/podman" "$@"; }
podman_get() { # podman_get REF [ARGS...]
  local ref=$1 rc=0; shift
  podman_ pull -q "$@" "$ref" >"$W/podman/pull.log" 2>&1 || rc=$?
  # shellcheck disable=SC2034 # for the caller, which compares it with INDEX
  GOT=$(podman_ image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$ref" 2>/dev/null || true)
  podman_ rmi -f "$ref" >/dev/null 2>&1 || true
  return $rc
}

VERSIONS=$(printf '%s\n' "${!CTD_BIN[@]}" | sort)
for v in $VERSIONS; do start_containerd "$v"; done
start_docker || { fail "dockerd did not start"; tail -20 "$W/docker/log"; }

