#!/usr/bin/env bash
# tests/e2e/partition.sh — a metal-stack partition of three image-cache nodes, each in its own network
# namespace, with a client namespace (PXE machines, a containerd node) and an "internet" namespace (nginx
# with boot files, Debian's docker-registry, dnsmasq as the outside resolver), joined by a bridge in a hub
# namespace (10.97.0.0/24; nothing else reachable).
#
# Checks:
#   - DNS: every node answers with all three nodes, the first place rotating from answer to answer;
#   - a rack boots at once: 30 clients, released together and spread over the nodes by DNS, fetch a
#     kernel, an initrd and an OS image: every body right, each file GET from the origin exactly once;
#   - containerd pulls through a hosts.toml listing all three nodes (written by `image-cache
#     containerd-hosts --mirror … --mirror … --mirror …`; the registry itself unreachable from the
#     client, so the pull can only succeed through the cache): every blob fetched from the registry once;
#   - a node is killed (-9) during a second, cold pull: the pull completes through the other nodes (one
#     retry allowed, as kubelet retries) with the pushed digest (containerd verifies every digest).
# Needs root. Installs dnsutils, dnsmasq-base, nginx-light, curl, iproute2, containerd, docker-registry,
# skopeo, python3 if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start partition dig:dnsutils dnsmasq:dnsmasq-base nginx:nginx-light curl:curl ip:iproute2 \
  containerd:containerd docker-registry:docker-registry skopeo:skopeo python3:python3
P=ic-e2e-pt
declare -A ADDR=([a]=10.97.0.11 [b]=10.97.0.12 [c]=10.97.0.13 [client]=10.97.0.20 [origin]=10.97.0.30)
NODES=(a b c)
cleanup() {
  umount -R "$W/ctd/root" 2>/dev/null || true
  e2e_cleanup
}
trap cleanup EXIT
trap 'exit 143' TERM INT
in_() { local n=$1; shift; ip netns exec $P-$n "$@"; }
wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.1; done
}

e2e_netns $P-hub $P-a $P-b $P-c $P-client $P-origin
ip -n $P-hub link add br0 type bridge
ip -n $P-hub link set br0 up
for n in a b c client origin; do
  ip link add pt-$n netns $P-hub type veth peer name eth0 netns $P-$n
  ip -n $P-hub link set pt-$n master br0
  ip -n $P-hub link set pt-$n up
  ip -n $P-$n addr add "${ADDR[$n]}/24" dev eth0
  ip -n $P-$n link set eth0 up
done

# --- the internet: boot files, a registry with an image, a resolver ---------------------------------
mkdir -p "$W/www/boot"
head -c 6000000 /dev/urandom >"$W/www/boot/vmlinuz"
head -c 24000000 /dev/urandom >"$W/www/boot/initrd.img"
head -c 48000000 /dev/urandom >"$W/www/boot/os.tar.lz4"
chmod -R a+rX "$W/www"
e2e_nginx "$P-origin" "server { listen ${ADDR[origin]}:80; root $W/www; }" "$W/origin.log"
in_ origin dnsmasq --keep-in-foreground --pid-file= --port=53 --listen-address="${ADDR[origin]}" --bind-interfaces \
  --no-resolv --no-hosts --address=/files.test/"${ADDR[origin]}" --address=/#/ --log-facility=/dev/null &
PID[dns]=$!
mkdir -p "$W/reg"
cat >"$W/reg/config.yml" <<YAML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $W/reg/data}
http: {addr: ${ADDR[origin]}:5000}
YAML
in_ origin docker-registry serve "$W/reg/config.yml" >>"$W/reg/log" 2>&1 &
PID[registry]=$!
wait_for 20 in_ origin curl -sf "http://${ADDR[origin]}:5000/v2/"
INDEX=$(python3 tests/e2e/oci-image.py "$W/img" 1 1 20480 8192 256)
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$W/policy.json"
in_ origin skopeo --policy "$W/policy.json" copy -q --all --dest-tls-verify=false \
  "oci:$W/img:1" "docker://${ADDR[origin]}:5000/test/app:1"
INDEX2=$(python3 tests/e2e/oci-image.py "$W/img2" 2 1 24576 8192)
in_ origin skopeo --policy "$W/policy.json" copy -q --all --dest-tls-verify=false \
  "oci:$W/img2:2" "docker://${ADDR[origin]}:5000/test/app:2"

# --- three cache nodes ------------------------------------------------------------------------------
node_config() { # node_config SELF
  local peers=() n
  for n in "${NODES[@]}"; do [ "$n" = "$1" ] || peers+=("${ADDR[$n]}"); done
  e2e_node_config "$W/$1" "${ADDR[$1]}" "${peers[*]}" 'health_interval = "1s"' 'peer_timeout = "3s"' <<TOML
[http]
listen = ["${ADDR[$1]}:80"]
[dns]
listen = ["${ADDR[$1]}:53"]
upstreams = ["${ADDR[origin]}:53"]
allow = ["10.97.0.0/24"]
[passthrough]
enabled = false
[[domains]]
name = "files.test"
origin = "http://files.test"
[registry.upstreams]
"registry.test:5000" = "http://${ADDR[origin]}:5000"
TOML
}
start_node() {
  ip netns exec $P-$1 "$BIN" serve --config "$W/$1/config.toml" >>"$W/$1/log" 2>&1 &
  PID[$1]=$!
  wait_for 10 in_ client curl -sf "http://${ADDR[$1]}/health" || { echo "node $1 did not start"; tail "$W/$1/log"; exit 1; }
}
for n in "${NODES[@]}"; do node_config "$n"; start_node "$n"; done
ALL="${ADDR[a]} ${ADDR[b]} ${ADDR[c]}"
answers() { in_ client dig +short +time=1 +tries=1 @"$1" files.test A | tr '\n' ' ' | sed 's/ $//'; }
sorted() { tr ' ' '\n' <<<"$1" | sort | tr '\n' ' ' | sed 's/ $//'; }
deadline=$((SECONDS + 15))
until [ "$(sorted "$(answers "${ADDR[a]}")")" = "$ALL" ] && [ "$(sorted "$(answers "${ADDR[c]}")")" = "$ALL" ]; do
  ((SECONDS < deadline)) || { fail "nodes never all listed: '$(answers "${ADDR[a]}")'"; break; }
  sleep 0.2
done
firsts=$(for _ in 1 2 3 4 5 6; do answers "${ADDR[b]}" | cut -d' ' -f1; done | sort -u | wc -l)
[ "$firsts" = 3 ] && pass "DNS: node B's answers list all three nodes, each first in turn" ||
  fail "DNS: $firsts distinct first answers out of 6"

# --- a rack boots at once ---------------------------------------------------------------------------
declare -A WANT
for f in vmlinuz initrd.img os.tar.lz4; do WANT[$f]=$(md5sum "$W/www/boot/$f" | cut -d' ' -f1); done
mkdir -p "$W/clients"
cat >"$W/machine.sh" <<'SH'
#!/bin/sh
# one PXE machine: ask DNS (the node it was handed as resolver), fetch the boot files from the first answer
i=$1; dns=$2; out=$3
ip=$(dig +short +time=2 +tries=2 @"$dns" files.test A | head -1)
echo "$ip" >"$out/$i.node"
while [ ! -e "$out/go" ]; do sleep 0.01; done
for f in vmlinuz initrd.img os.tar.lz4; do
  curl -sf --max-time 60 -H 'Host: files.test' "http://$ip/boot/$f" | md5sum | cut -d' ' -f1 >"$out/$i.$f"
done
SH
chmod +x "$W/machine.sh"
mpids=()
for i in $(seq 1 30); do
  dns=${ADDR[${NODES[$((i % 3))]}]}
  in_ client "$W/machine.sh" "$i" "$dns" "$W/clients" &
  mpids+=($!)
done
sleep 1
t0=$(date +%s.%N)
touch "$W/clients/go"
for p in "${mpids[@]}"; do wait "$p" || true; done
took=$(echo "$(date +%s.%N) - $t0" | bc)
bad=0
for i in $(seq 1 30); do
  for f in vmlinuz initrd.img os.tar.lz4; do
    [ "$(cat "$W/clients/$i.$f" 2>/dev/null)" = "${WANT[$f]}" ] || bad=$((bad + 1))
  done
done
[ "$bad" = 0 ] && pass "30 machines at once: 90 boot files, all correct ($(printf '%.1f' "$took") s)" || fail "$bad wrong boot files"
spread=$(cat "$W/clients"/*.node | sort | uniq -c | awk '{print $1}' | tr '\n' ' ')
[ "$(cat "$W/clients"/*.node | sort -u | wc -l)" = 3 ] && pass "the machines spread over all three nodes ($spread)" ||
  fail "machines landed on: $(cat "$W/clients"/*.node | sort | uniq -c | tr '\n' ' ')"
for f in vmlinuz initrd.img os.tar.lz4; do
  n=$(grep -c "\"GET /boot/$f " "$W/origin.log" || true)
  [ "$n" = 1 ] && pass "origin: /boot/$f downloaded once for the partition" || fail "origin: /boot/$f GET $n times"
done

# --- containerd on a node: every cache node listed, the registry unreachable ------------------------
mkdir -p "$W/hosts/registry.test:5000" "$W/ctd"
"$BIN" containerd-hosts --registry registry.test:5000 \
  --mirror "http://${ADDR[a]}" --mirror "http://${ADDR[b]}" --mirror "http://${ADDR[c]}" \
  >"$W/hosts/registry.test:5000/hosts.toml"
SOCK=$W/ctd/c.sock
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
in_ client containerd --config "$W/ctd/config.toml" >"$W/ctd/log" 2>&1 &
PID[containerd]=$!
wait_for 20 in_ client ctr --address "$SOCK" version
SNAP=()
in_ client ctr --address "$SOCK" plugins ls | grep -q 'overlayfs.*ok' || SNAP=(--snapshotter native)
pull() { # pull REF → 0 when the image's digest is the pushed one
  in_ client ctr --address "$SOCK" images pull "${SNAP[@]}" --hosts-dir "$W/hosts" "$1" >"$W/pull.log" 2>&1 &&
    [ "$(in_ client ctr --address "$SOCK" images ls | awk -v r="$1" '$1 == r {print $3}')" = "$2" ]
}
if pull registry.test:5000/test/app:1 "$INDEX"; then pass "containerd pulled through the three-node mirror list"; else fail "pull 1"; tail -5 "$W/pull.log"; fi
BLOBS=$(grep -o '"GET /v2/test/app/blobs/sha256:[0-9a-f]*' "$W/reg/log" | sort | uniq -c)
if [ -n "$BLOBS" ] && ! echo "$BLOBS" | awk '$1 != 1 {bad=1} END {exit !bad}'; then
  pass "registry served each blob once: $(echo "$BLOBS" | wc -l) blobs"
else
  fail "blob GETs at the registry:"; echo "$BLOBS"
fi

# A node dies during a cold pull of another image.
in_ client ctr --address "$SOCK" images pull "${SNAP[@]}" --hosts-dir "$W/hosts" registry.test:5000/test/app:2 >"$W/pull2.log" 2>&1 &
pullpid=$!
sleep 0.4
kill -9 "${PID[a]}"; wait "${PID[a]}" 2>/dev/null || true; unset 'PID[a]'
if wait "$pullpid" && pull registry.test:5000/test/app:2 "$INDEX2"; then
  pass "node A killed during a cold pull: the pull completed through B and C"
elif pull registry.test:5000/test/app:2 "$INDEX2"; then
  pass "node A killed during a cold pull: the pull completed on its retry through B and C"
else
  fail "pull with node A killed"; tail -5 "$W/pull.log"
fi
for n in b c; do
  in_ client curl -sf "http://${ADDR[$n]}/metrics" | grep '^image_cache_peer_fills_total' | grep -v ' 0$' | sed "s/^/  node $n: /" || true
done

e2e_done partition || { for n in a b c; do echo "--- node $n"; tail -15 "$W/$n/log" 2>/dev/null; done; exit 1; }
