#!/usr/bin/env bash
# bench/partition.sh — a partition of three image-cache nodes (127.0.0.1/.2/.3, one port) against one node,
# N clients pulling a set of cold objects at once, in the same run:
#   - origin bytes / object bytes for the partition (goal 1.00: every object downloaded once for all three
#     nodes, however many clients asked where);
#   - wall time of N clients spread over the three nodes against N clients on one node (goal <= 1.0).
# The origin is nginx on loopback (plain HTTP: this measures the partition, not TLS). Every round starts
# with empty stores. OBJECTS (default 4) files of SIZE_MB (default 64), N clients (default 24), REPEAT
# rounds (default 3, medians).
set -euo pipefail
set -E; trap 'exit 1' ERR
cd "$(dirname "$0")/.."
OBJECTS=${OBJECTS:-4}
SIZE_MB=${SIZE_MB:-64}
N=${N:-24}
REPEAT=${REPEAT:-3}
source bench/lib.sh
source tests/e2e/lib.sh # e2e_node_config
bench_need nginx:nginx-light curl:curl bc:bc
cargo build --release --locked -q
BIN=$PWD/target/release/image-cache
bench_start partition
stop_nodes() { for p in "${NODE_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait "${NODE_PIDS[@]:-}" 2>/dev/null || true; NODE_PIDS=(); }
bench_stop() { stop_nodes; }
NODE_PIDS=()
PORT=18180

mkdir -p "$W/www"
for i in $(seq 1 "$OBJECTS"); do head -c $((SIZE_MB * 1048576)) /dev/urandom >"$W/www/obj$i.img"; done
chmod -R a+rX "$W/www"
cat >"$W/nginx.conf" <<CONF
daemon off;
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 1024; }
http {
  log_format bytes '\$body_bytes_sent';
  access_log $W/access.log bytes;
  sendfile on;
  server { listen 127.0.0.1:18181; root $W/www; }
}
CONF
nginx -c "$W/nginx.conf" &
PIDS+=($!)
sleep 0.5

start_nodes() { # start_nodes COUNT: fresh stores, every node knowing the others
  local count=$1 i j peers
  for i in $(seq 1 "$count"); do
    peers=""
    for j in $(seq 1 "$count"); do [ "$i" = "$j" ] || peers="$peers 127.0.0.$j"; done
    rm -rf "$W/n$i"
    e2e_node_config "$W/n$i" "127.0.0.$i" "$peers" "peer_port = $PORT" 'health_interval = "200ms"' <<TOML
[http]
listen = ["127.0.0.$i:$PORT"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[[domains]]
name = "files.test"
origin = "http://127.0.0.1:18181"
[log]
level = "warn"
TOML
    "$BIN" serve --config "$W/n$i/config.toml" >"$W/n$i/log" 2>&1 &
    NODE_PIDS+=($!)
  done
  for i in $(seq 1 "$count"); do
    for _ in $(seq 100); do curl -sf "http://127.0.0.$i:$PORT/health" >/dev/null && break; sleep 0.05; done
  done
  # Every node sees every other one up (rise: 2 polls).
  for i in $(seq 1 "$count"); do
    for _ in $(seq 100); do
      up=$(curl -s "http://127.0.0.$i:$PORT/metrics" | awk '/^image_cache_peer_up\{/ && $2 == 1' | wc -l)
      [ "$up" = $((count - 1)) ] && break
      sleep 0.05
    done
  done
}

run_clients() { # run_clients COUNT → seconds for N clients (client k on node k % COUNT) to fetch every object
  local count=$1 k o t0 clients=()
  t0=$(date +%s.%N)
  for k in $(seq 1 "$N"); do
    (
      node=$(((k % count) + 1))
      for o in $(seq 1 "$OBJECTS"); do
        curl -sf -H 'Host: files.test' -o /dev/null "http://127.0.0.$node:$PORT/obj$o.img" || echo "client $k: obj$o failed" >&2
      done
    ) &
    clients+=($!)
  done
  wait "${clients[@]}"
  echo "$(date +%s.%N) - $t0" | bc
}

total=$((OBJECTS * SIZE_MB * 1048576))
ratios=(); factors=(); tp=(); t1=()
for r in $(seq 1 "$REPEAT"); do
  : >"$W/access.log"
  start_nodes 3
  t=$(run_clients 3)
  stop_nodes
  sleep 0.3
  origin=$(awk '{s += $1} END {print s + 0}' "$W/access.log")
  factors+=("$(echo "scale=3; $origin / $total" | bc)")
  tp+=("$t")
  start_nodes 1
  t_one=$(run_clients 1)
  stop_nodes
  t1+=("$t_one")
  ratios+=("$(echo "scale=3; $t / $t_one" | bc)")
  echo "round $r: partition ${t} s (origin bytes / object bytes ${factors[-1]}), one node ${t_one} s, ratio ${ratios[-1]}"
done
echo "== bench/partition.sh: $N clients, $OBJECTS objects of $SIZE_MB MiB, $REPEAT rounds (medians)"
printf '| setup | wall time | origin bytes / object bytes |\n| --- | --- | --- |\n'
printf '| 3 nodes, clients spread | %.2f s | %s |\n' "$(printf '%s\n' "${tp[@]}" | median)" "$(printf '%s\n' "${factors[@]}" | median)"
printf '| 1 node, all clients | %.2f s | - |\n' "$(printf '%s\n' "${t1[@]}" | median)"
printf 'ratio (3 nodes / 1 node, median of rounds): %s (goal <= 1.0); origin factor goal 1.00\n' "$(printf '%s\n' "${ratios[@]}" | median)"
