# tests/e2e/lib.sh — sourced by the end-to-end scripts: the preamble they all share.
#   e2e_start NAME CMD:PACKAGE...   root check, missing Debian packages installed, release build (sets BIN),
#                                   a 0755 scratch dir (sets W: daemons that drop privileges read from it)
#   PID[name]=$!                    background processes that e2e_stop_all stops (TERM, then KILL)
#   pass / fail, FAILS              one line per check; the script ends with `e2e_done NAME`
#   e2e_nginx NS 'server {…}' [LOG] nginx in the foreground in namespace NS (PID[nginx]), access log off unless named
#   e2e_netns NS...                 fresh namespaces with lo up and an empty /etc/netns/NS (for a hosts file)
#   e2e_cleanup                     for `trap e2e_cleanup EXIT`: stops PID[], kills what still runs in the
#                                   namespaces of e2e_netns, deletes them and their /etc/netns, removes W
# A script with more to undo (mounts, namespaces made by hand) writes its own EXIT trap around e2e_stop_all.
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
  need+=(${E2E_EXTRA_PACKAGES:-})
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  cargo build --release --locked -q
  BIN=$PWD/target/release/image-cache
  W=$(mktemp -d "/tmp/ic-$name.XXXXXX")
  chmod 755 "$W"
}

e2e_nginx() {
  cat >"$W/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 64; }
http {
  access_log ${3:-off};
  $2
}
CONF
  ip netns exec "$1" nginx -c "$W/nginx.conf" &
  PID[nginx]=$!
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
  rm -rf "$W"
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
