#!/usr/bin/env bash
# tests/e2e/container.sh — the container image as Kubernetes runs it: built by contrib/container/build.sh
# (an OCI layout), loaded into Debian's podman (`podman pull oci:…`), run non-root with a read-only root,
# every capability dropped and no new privileges, in the private network namespace of oci-scene.sh, as
# the registry mirror for containerd: the same pulls as tests/e2e/containerd.sh, against the container.
# The container resolves the registry's name through its own /etc/resolv.conf (dnsmasq in the namespace):
# `dns.upstreams = []`, as in a pod.
#
# Checks: the image's built-in config passes check-config inside the image; the service runs as uid 65532
# with a read-only root; a cold pull yields the pushed index digest (containerd cannot reach the registry
# itself); a warm pull after `images rm` is served by the cache, every blob fetched from the registry once;
# the state files on the volume belong to 65532; `podman stop` ends it cleanly (exit 0).
# Needs root. Installs podman, containerd, docker-registry, skopeo, dnsmasq, python3 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start container podman:podman containerd:containerd docker-registry:docker-registry skopeo:skopeo \
  dnsmasq:dnsmasq-base python3:python3 curl:curl ip:iproute2 bc:bc
NS=ic-e2e-container
OCI_SCENE_NO_CACHE=1
source tests/e2e/oci-scene.sh
# podman names an `oci:` image after its folder, which must be lowercase (mktemp's is not).
OCI=/tmp/ic-e2e-container-oci.$$

# --- the image, loaded into a private podman ---------------------------------------------------------
bash contrib/container/build.sh "$OCI" e2e
source tests/e2e/podman.sh
podman_private_setup "$W/podman"
podman_() { podman_private "$W/podman" "$@"; }
podman_stop() { podman_ stop -t 10 ic >/dev/null 2>&1 || true; podman_ rm -f ic >/dev/null 2>&1 || true; }
trap 'podman_stop; rm -rf "$OCI"; e2e_cleanup' EXIT
IMAGE=$(podman_ pull -q "oci:$OCI:e2e")
echo "loaded image $IMAGE"
RUN=(--network "ns:/run/netns/$NS" --read-only --cap-drop ALL --security-opt no-new-privileges
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=1024:1024)

if podman_ run --rm "${RUN[@]}" "$IMAGE" check-config >"$W/check.log" 2>&1; then
  pass "the built-in config passes check-config inside the image"
else
  fail "check-config in the image"; tail -5 "$W/check.log"
fi

# --- the registry's name, for the container's resolv.conf ---------------------------------------------
ip netns exec $NS dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=127.0.0.1 --address=/registry.test/127.0.0.1 --pid-file="$W/dnsmasq.pid" \
  --log-facility="$W/dnsmasq.log" --log-queries &
PID[dnsmasq]=$!
echo "nameserver 127.0.0.1" >"$W/resolv.conf"
cat >"$W/ctr.toml" <<TOML
state_dir = "/var/lib/image-cache"
[http]
listen = ["127.0.0.1:8080"]
[dns]
enabled = false
upstreams = []
[passthrough]
enabled = false
[log]
format = "json"
[registry]
tag_ttl = "1s"
[registry.upstreams]
"registry.test:5000" = "http://registry.test:5000"
TOML
mkdir -p "$W/state"
chown 65532:65532 "$W/state"
podman_ run -d --name ic "${RUN[@]}" \
  -v "$W/ctr.toml:/etc/image-cache/config.toml:ro" -v "$W/resolv.conf:/etc/resolv.conf:ro" \
  -v "$W/state:/var/lib/image-cache" "$IMAGE" >/dev/null
if wait_for 30 in_ns curl -sf http://127.0.0.1:8080/ready; then
  pass "the container is ready"
else
  fail "the container never became ready"; podman_ logs ic 2>&1 | tail -20; exit 1
fi
CPID=$(podman_ inspect --format '{{.State.Pid}}' ic)
UIDS=$(awk '/^Uid:/ {print $2, $3}' "/proc/$CPID/status")
[ "$UIDS" = "65532 65532" ] && pass "runs as uid 65532" || fail "uid of the service: '$UIDS'"
CAPS=$(awk '/^CapEff:/ {print $2}' "/proc/$CPID/status")
[ "$CAPS" = 0000000000000000 ] && pass "no effective capabilities" || fail "CapEff $CAPS"
RO=$(podman_ inspect --format '{{.HostConfig.ReadonlyRootfs}}' ic)
[ "$RO" = true ] && pass "read-only root filesystem" || fail "ReadonlyRootfs=$RO"

# --- containerd pulls through the container ----------------------------------------------------------
REF=registry.test:5000/test/app:1
pulled "cold pull through the container" "$W/hosts" "$REF"
pulled "warm pull through the container" "$W/hosts" "$REF"
BLOBS=$(grep -o '"GET /v2/test/app/blobs/sha256:[0-9a-f]*' "$W/reg/log" | sort | uniq -c)
if [ -n "$BLOBS" ] && ! echo "$BLOBS" | awk '$1 != 1 {bad=1} END {exit !bad}'; then
  pass "the registry served each blob once: $(echo "$BLOBS" | wc -l) blobs"
else
  fail "blob GETs at the registry:"; echo "$BLOBS"
fi
grep -q 'registry.test' "$W/dnsmasq.log" && pass "the registry's name came from the container's resolv.conf" \
  || fail "dnsmasq was never asked for registry.test"
OWNERS=$(find "$W/state" -mindepth 1 -printf '%u\n' | sort -u | tr '\n' ' ')
[ "$OWNERS" = "65532 " ] && pass "state on the volume belongs to 65532" || fail "state owners: '$OWNERS'"

# --- a clean stop ------------------------------------------------------------------------------------
podman_ stop -t 10 ic >/dev/null
CODE=$(podman_ inspect --format '{{.State.ExitCode}}' ic)
[ "$CODE" = 0 ] && pass "podman stop: exit 0" || { fail "exit code after stop: $CODE"; podman_ logs ic 2>&1 | tail -10; }

[ "$FAILS" = 0 ] || { echo "--- container log"; podman_ logs ic 2>&1 | tail -30; }
e2e_done container
