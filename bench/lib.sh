# shellcheck shell=bash
# bench/lib.sh — sourced by the benchmarks: what every one of them needs, once.
#   bench_need CMD:PACKAGE...   installs the Debian packages whose command is missing
#   bench_start NAME            W = a fresh 0755 scratch folder /tmp/ic-NAME.XXXXXX (daemons that drop
#                               privileges read from it); PIDS=(); an EXIT trap that calls bench_stop when the
#                               script defines it, stops every PID in PIDS (TERM), waits, and removes W
#   median                      numbers on stdin, one a line → their median (the mean of the middle two for an
#                               even count, as Python's statistics.median, which the Python summaries use)

bench_need() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

bench_start() {
  W=$(mktemp -d "/tmp/ic-$1.XXXXXX")
  chmod 755 "$W"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if declare -F bench_stop >/dev/null; then bench_stop; fi
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}

median() {
  sort -g | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
