#!/usr/bin/env bash
# tests/nix.sh — what can be checked of the Nix packaging without a Nix binary cache (nix 2.8 from Debian):
#   1. every .nix file parses (syntax and unbound variables);
#   2. the module's rendering logic (nixos/render.nix, builtins only) passes nix/tests/render.nix;
#   3. every example config and the TOML rendered for each VM test node pass `image-cache check-config`;
#   4. the hosts.toml the containerd-mirror module writes equals what `image-cache containerd-hosts` prints;
#   5. flake.lock has the structure of a v7 lock with a pinned github nixpkgs;
#   6. with NIXPKGS_LIB pointing at a nixpkgs lib checkout: the real modules under lib.evalModules
#      (nix/tests/module-eval.nix); skipped, visibly, without it.
# Building the package and the VM tests need `nix flake check` on a machine with a binary cache and KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null; }
W=$(mktemp -d /tmp/ic-nix.XXXXXX)
trap 'rm -rf "$W"' EXIT
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
eval_json() { nix-instantiate --eval --strict --json "$@"; }

n=0
while IFS= read -r f; do
  n=$((n + 1))
  nix-instantiate --parse "$f" >/dev/null 2>"$W/parse.err" || { fail "parse $f"; cat "$W/parse.err"; }
done < <(git ls-files '*.nix')
pass "$n .nix files parsed"

eval_json nix/tests/render.nix >"$W/render.json"
python3 - "$W/render.json" "$W" <<'PY' || FAILS=$((FAILS + 1))
import json, sys, os
d = json.load(open(sys.argv[1]))
if d["failures"]:
    print("FAIL render.nix:", *d["failures"], sep="\n  "); sys.exit(1)
print("PASS nix/tests/render.nix: every check")
os.makedirs(os.path.join(sys.argv[2], "configs"))
for name, text in d["configs"].items():
    open(os.path.join(sys.argv[2], "configs", name + ".toml"), "w").write(text)
open(os.path.join(sys.argv[2], "hosts.toml"), "w").write(d["hosts"])
PY

cargo build -q --locked
BIN=target/debug/image-cache
for cfg in examples/*.toml "$W"/configs/*.toml; do
  if out=$("$BIN" check-config --config "$cfg" 2>&1 >/dev/null); then pass "check-config $(basename "$cfg")"; else fail "check-config $cfg: $out"; fi
done

"$BIN" containerd-hosts --mirror http://10.0.0.1:80 --mirror http://10.0.0.2 --mirror http://10.0.0.3:8080 \
  >"$W/hosts-binary.toml"
if python3 -c 'import sys, tomllib; a, b = (tomllib.load(open(p, "rb")) for p in sys.argv[1:]); sys.exit(a != b)' \
  "$W/hosts.toml" "$W/hosts-binary.toml"; then
  pass "containerd-mirror module's hosts.toml equals image-cache containerd-hosts"
else
  fail "hosts.toml differs:"; diff "$W/hosts.toml" "$W/hosts-binary.toml" || true
fi

python3 - <<'PY' && pass "flake.lock: v7, nixpkgs pinned (github, rev, narHash, lastModified)" || fail "flake.lock structure"
import json, re
lock = json.load(open("flake.lock"))
assert lock["version"] == 7 and lock["root"] == "root"
assert lock["nodes"]["root"]["inputs"] == {"nixpkgs": "nixpkgs"}
l = lock["nodes"]["nixpkgs"]["locked"]
assert set(l) == {"lastModified", "narHash", "owner", "repo", "rev", "type"}, l
assert l["type"] == "github" and l["owner"] == "NixOS" and l["repo"] == "nixpkgs"
assert re.fullmatch(r"[0-9a-f]{40}", l["rev"]) and re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", l["narHash"])
assert isinstance(l["lastModified"], int) and l["lastModified"] > 1.7e9
o = lock["nodes"]["nixpkgs"]["original"]
assert o == {"owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github"}
PY

if [ -n "${NIXPKGS_LIB:-}" ] && [ -d "$NIXPKGS_LIB/lib" ]; then
  out=$(eval_json nix/tests/module-eval.nix)
  if [ "$out" = '{"failures":[]}' ]; then pass "nix/tests/module-eval.nix (lib.evalModules with $NIXPKGS_LIB)"; else fail "module-eval: $out"; fi
else
  echo "SKIPPED nix/tests/module-eval.nix: NIXPKGS_LIB does not point at a nixpkgs lib checkout (module evaluation with lib.evalModules not run)"
fi
echo "SKIPPED (need a Nix binary cache and KVM): nix build, nix flake check, the VM tests in nixos/tests/"
echo "nix checks: $FAILS failure(s)"
[ "$FAILS" = 0 ]
