# shellcheck shell=bash
# tests/e2e/podman.sh — sourced: a podman of the test's own, configured the way it runs on these machines
# (vfs storage, file locks, cgroupfs, no event log: what works on a CI machine without systemd or overlay
# mounts), with all its state under one folder and its fixed path /var/lib/containers a scratch tmpfs in a
# private mount namespace.
#   podman_private_setup DIR    writes DIR/containers.conf, DIR/storage.conf and an empty DIR/auth.json
#   podman_private DIR ARGS...  podman with that configuration (and DIR/registries.conf when it exists),
#                               started through $PODMAN_WRAP when set (a command or function that enters a
#                               network namespace and runs its arguments)
podman_private_setup() {
  mkdir -p "$1"
  cat >"$1/containers.conf" <<TOML
[engine]
lock_type = "file"
events_logger = "none"
cgroup_manager = "cgroupfs"
TOML
  cat >"$1/storage.conf" <<TOML
[storage]
driver = "vfs"
graphroot = "$1/root"
runroot = "$1/run"
TOML
  echo '{"auths":{}}' >"$1/auth.json"
}
podman_private() {
  local dir=$1; shift
  local env=(CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
    REGISTRY_AUTH_FILE="$dir/auth.json")
  [ -f "$dir/registries.conf" ] && env+=(CONTAINERS_REGISTRIES_CONF="$dir/registries.conf")
  ${PODMAN_WRAP:-} unshare -m --propagation private env "${env[@]}" sh -c '
      mkdir -p /var/lib/containers && mount -t tmpfs none /var/lib/containers
      exec podman --root "$0/root" --runroot "$0/run" --tmpdir "$0/tmp" "$@"' "$dir" "$@"
}
