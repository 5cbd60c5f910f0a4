# shellcheck shell=bash
# tests/e2e/lib.sh — sourced by the end-to-end scripts: the preamble they all share.
#   e2e_start NAME CMD:PACKAGE...   root check, missing Debian packages installed, release build (sets BIN),
#                                   a 0755 scratch dir (sets W: daemons that drop privileges read from it)
#   PID[name]=$!                    background processes that e2e_stop_all stops (TERM, then KILL)
#   pass / fail, FAILS              one line per check; the script ends with `e2e_done NAME`
#   e2e_nginx NS 'server {…}' [LOG] nginx in the foreground in namespace NS (PID[nginx]), access log off unless named
#   e2e_netns NS...                 fresh namespaces with lo up and an empty /etc/netns/NS (for a hosts file)
#   e2e_node_config DIR SELF "PEER…" [NODES_LINE…] <<TOML
#                                   DIR/config.toml of one cache node: its state in DIR/state, the node's own
#                                   tables from stdin ([http], [dns], [[domains]] …), then [nodes] with SELF, the
#                                   PEERs (space-separated, may be empty) and the NODES_LINEs (`peer_timeout = "3s"`)
#   e2e_cleanup                     for `trap e2e_cleanup EXIT`: stops PID[], kills what still runs in the
#                                   namespaces of e2e_netns, deletes them and their /etc/netns, calls e2e_undo
#                                   when the script defines it (mounts), removes W (kept with E2E_KEEP=1, to
#                                   read the logs of a failed run)
declare -A PID=()
E2E_NETNS=()
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }

e2e_start() {
  local name=$1; shift
  [ "$(id -u)" = 0 ] || { echo "tests/e2e/$name.sh needs root (network namespaces)"; exit 1; }
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  local extra=()
  read -r -a extra <<<"${E2E_EXTRA_PACKAGES:-}"
  need+=("${extra[@]}")
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  cargo build --release --locked -q
  # shellcheck disable=SC2034 # for the scripts that source this file
  BIN=$PWD/target/release/image-cache
  W=$(mktemp -d "/tmp/ic-$name.XXXXXX")
  chmod 755 "$W"
}

# e2e_nginx NETNS SERVER_BLOCKS [ACCESS_LOG] [NAME] — an nginx in NETNS; NAME (default nginx) names its
# files in $W and its PID entry, so a scenario can run more than one.
e2e_nginx() {
  local name=${4:-nginx}
  cat >"$W/$name.conf" <<CONF
daemon off;
worker_processes 1;
pid $W/$name.pid;
error_log $W/$name-error.log;
events { worker_connections 64; }
http {
  access_log ${3:-off};
  $2
}
CONF
  ip netns exec "$1" nginx -c "$W/$name.conf" &
  PID[$name]=$!
}

# e2e_cert DIR LEAF NAME... — a CA (DIR/ca.pem, what the cache's upstream.ca_file trusts) and a server
# certificate it signed for NAME... (DIR/LEAF.pem, DIR/LEAF.key). A self-signed certificate used as the
# server's own is refused by rustls (CaUsedAsEndEntity), as by browsers.
e2e_cert() {
  local dir=$1 leaf=$2 san="" name
  shift 2
  for name in "$@"; do san+="${san:+,}DNS:$name"; done
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ic-e2e-ca -keyout "$dir/ca.key" \
    -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$dir/$leaf.key" -out "$dir/$leaf.csr" 2>/dev/null
  printf 'subjectAltName=%s\n' "$san" >"$dir/$leaf.ext"
  openssl x509 -req -in "$dir/$leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 1 -extfile "$dir/$leaf.ext" -out "$dir/$leaf.pem" 2>/dev/null
}

e2e_netns() {
  local ns
  for ns in "$@"; do
    E2E_NETNS+=("$ns")
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # `ip netns exec` mounts the files of /etc/netns/<ns>/ over /etc/: a hosts file here is for that namespace only.
    mkdir -p "/etc/netns/$ns"
  done
}

e2e_cleanup() {
  e2e_stop_all
  local ns
  for ns in "${E2E_NETNS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  if declare -F e2e_undo >/dev/null; then e2e_undo; fi
  [ -n "${E2E_KEEP:-}" ] || rm -rf "$W"
}

e2e_node_config() {
  local dir=$1 self=$2 peer quoted=()
  for peer in $3; do quoted+=("\"$peer\""); done
  shift 3
  mkdir -p "$dir"
  {
    echo "state_dir = \"$dir/state\""
    cat
    echo "[nodes]"
    echo "self = \"$self\""
    echo "peers = [$(IFS=,; echo "${quoted[*]}")]"
    if (($#)); then printf '%s\n' "$@"; fi
  } >"$dir/config.toml"
}

e2e_stop_all() {
  local p
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}

e2e_done() {
  echo "$1 e2e: $FAILS failure(s)"
  [ "$FAILS" = 0 ]
}
