#!/usr/bin/env bash
# tests/e2e/status-page.sh — Debian's chromium, headless, loads the status page of the real binary while a
# download is being filled from a throttled origin: the fill's <progress> is there and advances between two
# loads, the object tables have rows, a hostile file name shows as text (no element), the page's script runs
# under its CSP and refreshes the live part, and a screenshot is saved (its path is printed as ARTIFACT).
# The CLI then acts on what the page shows: `store pin` through the admin API, seen on the next load.
# Runs in a private network namespace (loopback only). Needs root. Installs chromium, nginx-light, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
e2e_start status-page chromium:chromium nginx:nginx-light curl:curl python3:python3
NS=ic-e2e-status
ART=${E2E_ARTIFACTS:-/tmp/image-cache-artifacts}
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_ns() { ip netns exec $NS "$@"; }

e2e_netns $NS
mkdir -p "$ART"
printf '127.0.0.1 localhost\n127.0.0.1 files.test\n' >"/etc/netns/$NS/hosts"

# Origin: small files, one with markup in its name, and a 40 MB image throttled to 2 MB/s (about 20 s).
mkdir -p "$W/www/slow"
for i in 1 2 3; do head -c $((i * 300000)) /dev/urandom >"$W/www/small$i.img"; done
head -c 1000 /dev/urandom >"$W/www/evil<i>name.img"
head -c 40000000 /dev/urandom >"$W/www/slow/big.img"
chmod -R a+rX "$W/www"
e2e_nginx $NS "server { listen 127.0.0.1:8081; root $W/www; location /slow/ { limit_rate 2m; } }"

cat >"$W/config.toml" <<TOML
state_dir = "$W/state"
[http]
listen = ["127.0.0.1:8080"]
[dns]
enabled = false
upstreams = ["127.0.0.1:9"]
[passthrough]
enabled = false
[[domains]]
name = "files.test"
origin = "http://files.test:8081"
TOML
in_ns "$BIN" serve --config "$W/config.toml" >"$W/cache.log" 2>&1 &
PID[cache]=$!
for _ in $(seq 100); do in_ns curl -sf http://127.0.0.1:8080/health >/dev/null && break; sleep 0.1; done

get() { in_ns curl -sf -o /dev/null -H 'Host: files.test' "http://127.0.0.1:8080$1"; }
for i in 1 2 3; do get "/small$i.img"; done
get /small3.img
get /small3.img
get '/evil%3Ci%3Ename.img'

# A client downloading the big image: a fill in flight while the browser looks.
in_ns curl -sf -o "$W/big.out" -H 'Host: files.test' http://127.0.0.1:8080/slow/big.img &
PID[client]=$!
sleep 1

chrome() { # chrome ARGS... URL: headless chromium in the namespace, its own profile, nothing from outside
  HOME=$W in_ns timeout 60 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --disable-background-networking --disable-sync --disable-component-update \
    --disable-default-apps --user-data-dir="$W/chrome" "$@" 2>>"$W/chrome.log"
}
progress_value() { # the value of the big image's <progress> in a DOM dump on stdin
  python3 -c '
import re, sys
m = re.search(r"<progress class=\"fill\" data-key=\"file:files.test/slow/big.img\" max=\"40000000\" value=\"(\d+)\"", sys.stdin.read())
print(m.group(1) if m else "none")'
}

chrome --dump-dom http://127.0.0.1:8080/ >"$W/dom1.html"
sleep 2
chrome --dump-dom http://127.0.0.1:8080/ >"$W/dom2.html"
v1=$(progress_value <"$W/dom1.html")
v2=$(progress_value <"$W/dom2.html")
if [ "$v1" != none ] && [ "$v2" != none ] && [ "$v2" -gt "$v1" ]; then
  pass "the fill's progress element advances between two loads ($v1 then $v2 of 40000000 bytes)"
else
  fail "progress element: first load $v1, second $v2"; grep -o '<section id="fills">.*</section>' "$W/dom2.html" | head -c 2000
fi
rows=$(python3 -c '
import re, sys
html = open(sys.argv[1]).read()
sec = re.search(r"<section id=\"largest\">(.*?)</section>", html, re.S)
print(len(re.findall(r"<tr><td class=\"key\">file:files.test/", sec.group(1))) if sec else 0)' "$W/dom2.html")
[ "$rows" -ge 4 ] && pass "the largest-objects table has $rows rows" || fail "largest-objects rows: $rows"
grep -q '<td class="key">file:files.test/small3.img</td><td>879 KiB</td><td>2</td>' "$W/dom2.html" \
  && pass "the most-requested table shows small3.img with its 2 hits" || fail "small3.img's row not found"
if grep -q 'evil&lt;i&gt;name.img' "$W/dom2.html" && ! grep -q '<i>' "$W/dom2.html"; then
  pass "a file name with markup is shown as text, no element"
else
  fail "the hostile name was not escaped"
fi

# The script: with virtual time it refreshes #live at least once (fetch allowed by the CSP, no errors).
chrome --virtual-time-budget=7000 --dump-dom http://127.0.0.1:8080/ >"$W/dom3.html"
refreshed=$(grep -o 'data-refreshed="[0-9]*"' "$W/dom3.html" | grep -o '[0-9]*' || echo 0)
[ "${refreshed:-0}" -ge 1 ] && pass "the page script refreshed the live part $refreshed time(s)" \
  || { fail "the page script did not refresh (see $W/chrome.log)"; tail -5 "$W/chrome.log"; }
grep -q 'data-stale' "$W/dom3.html" && fail "the script marked the page stale" || true

chrome --screenshot="$ART/status-page.png" --window-size=1280,1600 --hide-scrollbars http://127.0.0.1:8080/ >/dev/null
if [ "$(head -c 8 "$ART/status-page.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
  pass "screenshot saved"
  echo "ARTIFACT status page screenshot: $ART/status-page.png ($(stat -c %s "$ART/status-page.png") bytes)"
else
  fail "no screenshot"
fi

# Act from the CLI (the server holds the store, so this goes through the admin API) and see it on the page.
if out=$(in_ns "$BIN" store --config "$W/config.toml" pin file:files.test/small1.img 2>&1); then
  pass "store pin through the admin API: $(echo "$out" | tail -1)"
else
  fail "store pin: $out"
fi
ls_out=$(in_ns "$BIN" store --config "$W/config.toml" ls --pinned true 2>/dev/null)
echo "$ls_out" | grep -q '^file:files.test/small1.img .* operator$' && pass "store ls --pinned true lists it, pinned by the operator" \
  || fail "store ls: $ls_out"
chrome --dump-dom http://127.0.0.1:8080/ >"$W/dom4.html"
grep -q '<td class="key">file:files.test/small1.img</td><td>293 KiB</td><td>0</td><td>[^<]*</td><td>yes</td>' "$W/dom4.html" \
  && pass "the page shows small1.img pinned" || fail "small1.img not shown pinned"

wait "${PID[client]}" && unset 'PID[client]'
[ "$(stat -c %s "$W/big.out")" = 40000000 ] && pass "the client's download completed" || fail "download incomplete"
e2e_done status-page
