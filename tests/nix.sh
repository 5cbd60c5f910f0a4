#!/usr/bin/env bash
# tests/nix.sh — what can be checked of the Nix packaging without a Nix binary cache (nix 2.8 from Debian):
#   1. every .nix file parses (syntax and unbound variables);
#   2. the module's rendering logic (nixos/render.nix, builtins only) passes nix/tests/render.nix;
#   3. every example config and the TOML rendered for each VM test node pass `image-cache check-config`;
#   4. the hosts.toml the containerd-mirror module writes equals what `image-cache containerd-hosts` prints;
#   5. flake.lock has the structure of a v7 lock with a pinned github nixpkgs;
#   6. nix/package.nix: its source fileset (nix/source-paths.nix) builds every cargo target (a copy of exactly
#      those git-tracked paths is checked with cargo) and its cargoTestFlags (nix/cargo-test.nix) name test
#      targets that exist;
#   7. the VM tests (nixos/tests/*.nix) without VMs: every node definition names an option of nixpkgs
#      (nix/tests/nixos-facts.json) or of an imported module of this flake, with the declared type; netboot
#      and NIC lints; each testScript compiles and calls only test-driver methods and globals that exist,
#      with parameters they take, and waits for image-cache ports where the node listens; the options the
#      modules read exist (nix/tests/vm-nodes.nix, nix/tests/vm-scripts.py);
#   8. every VM test's testScript run against the real programs each node runs, every node in namespaces of
#      its own on the test's VLAN, by a stand-in for the NixOS test driver, every expected value mutated
#      (nix/tests/vm-replay.py; root; skipped, visibly, without network namespaces);
#   9. the containerd settings the mirror module writes make containerd's CRI read certs.d: `config dump`
#      of Debian's containerd 1.6 and of sid's 2.x (fetched with tests/debian-newer.sh; skipped, visibly,
#      when the mirror cannot be reached);
#  10. with NIXPKGS_LIB pointing at a nixpkgs lib checkout: the real modules under lib.evalModules against
#      option declarations built from nix/tests/nixos-facts.json (nix/tests/module-eval.nix), and
#      nix/container.nix against the image contrib/container/build.sh makes (nix/tests/container-eval.nix);
#      skipped, visibly, without it;
#  11. nix/package.nix's check phase in a replayed Nix build sandbox (nix/tests/sandbox-check.sh; root), and
#      the replay's canary (it must withhold what Nix withholds).
# Building the package and running the VM tests in VMs need `nix flake check` on a machine with a binary
# cache and KVM.
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

# The module's typed defaults (render.moduleDefaults, what the module declares) are the binary's own partition
# defaults: the code is the one source.
printf '[nodes]\nself = "10.0.0.1"\n' >"$W/partition.toml"
"$BIN" check-config --config "$W/partition.toml" >"$W/partition-effective.toml"
eval_json --expr '(import ./nixos/render.nix).moduleDefaults' >"$W/module-defaults.json"
python3 - "$W/module-defaults.json" "$W/partition-effective.toml" <<'PY' && pass "the module's defaults are the binary's partition defaults" || fail "module defaults"
import json, sys, tomllib
module, code = json.load(open(sys.argv[1])), tomllib.load(open(sys.argv[2], "rb"))
def leaves(v, path=()):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from leaves(x, path + (k,))
    else:
        yield path, v
wrong = []
for path, value in leaves(module):
    got = code
    for k in path:
        got = got.get(k) if isinstance(got, dict) else None
    if got != value:
        wrong.append(f"{'.'.join(path)}: module {value!r}, binary {got!r}")
if wrong:
    print("FAIL nixos/render.nix moduleDefaults disagree with the binary:", *wrong, sep="\n  "); sys.exit(1)
PY

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

# --- 6. the package's fileset and test flags -------------------------------------------------------------
out=$(eval_json nix/tests/package-eval.nix)
if [ "$out" = '{"failures":[]}' ]; then pass "nix/package.nix: git-tracked files under nix/source-paths.nix, flags from nix/cargo-test.nix"; else fail "package-eval: $out"; fi
python3 - "$W/pkg" <<'PY' || FAILS=$((FAILS + 1))
import json, os, re, shutil, subprocess, sys
dest = sys.argv[1]
def nix_eval(expr):
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)
paths = nix_eval("map (p: baseNameOf (toString p)) (import ./nix/source-paths.nix)")
tracked = subprocess.run(["git", "ls-files", "--", *paths], capture_output=True, text=True, check=True).stdout.split()
for f in tracked:
    os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
    shutil.copy2(f, os.path.join(dest, f))
env = dict(os.environ, CARGO_TARGET_DIR=os.path.abspath("target"))
r = subprocess.run(["cargo", "check", "--all-targets", "--locked", "--offline", "-q"], cwd=dest, env=env,
                   capture_output=True, text=True)
if r.returncode != 0:
    print("FAIL nix/package.nix: its fileset does not build every cargo target:\n" + r.stderr[-2000:]); sys.exit(1)
meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"], cwd=dest,
                                 capture_output=True, text=True, check=True).stdout)
tests = {t["name"] for p in meta["packages"] for t in p["targets"] if "test" in t["kind"]}
flags = nix_eval("(import ./nix/cargo-test.nix).cargoTestFlags")
named = [flags[i + 1] for i, f in enumerate(flags) if f == "--test"]
missing = [n for n in named if n not in tests]
if missing:
    print(f"FAIL nix/cargo-test.nix: cargoTestFlags name test targets that do not exist: {missing} (targets: {sorted(tests)})"); sys.exit(1)
print(f"PASS nix/package.nix: its fileset (nix/source-paths.nix: {', '.join(paths)}) builds every target; --test {', '.join(named)} exist")
PY

# --- 7. the VM tests, read without VMs ----------------------------------------------------------------------
if nix-instantiate --eval --strict --json --read-write-mode nix/tests/vm-nodes.nix --arg dir ./nixos/tests \
  >"$W/vm-nodes.json" 2>"$W/vm-nodes.err"; then
  python3 nix/tests/vm-scripts.py "$W/vm-nodes.json" nix/tests/nixos-facts.json nixos/*.nix || FAILS=$((FAILS + 1))
  # The checker itself: the defects it exists for, in nix/tests/vm-lint-fixtures, must be reported.
  if nix-instantiate --eval --strict --json --read-write-mode nix/tests/vm-nodes.nix \
    --arg dir ./nix/tests/vm-lint-fixtures >"$W/fixtures.json" 2>"$W/fixtures.err"; then
    python3 nix/tests/vm-scripts.py "$W/fixtures.json" nix/tests/nixos-facts.json \
      nix/tests/vm-lint-fixtures/modules/reads-missing-option.nix >"$W/fixtures.out" || true
    python3 - "$W/fixtures.out" nix/tests/vm-lint-fixtures/expected.txt <<'PY' || FAILS=$((FAILS + 1))
import sys
out, expected = open(sys.argv[1]).read(), [l.strip() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")]
missed = [e for e in expected if e not in out]
if missed:
    print("FAIL the VM-test checker no longer reports:", *missed, sep="\n  "); print(out); sys.exit(1)
print(f"PASS the VM-test checker reports all {len(expected)} planted defects (nix/tests/vm-lint-fixtures)")
PY
  else
    fail "vm-nodes.nix on the lint fixtures:"; tail -5 "$W/fixtures.err"
  fi
else
  fail "nix/tests/vm-nodes.nix:"; tail -15 "$W/vm-nodes.err"
fi

# The facts' provenance: each source names its file, commit and standing at the pin (with NIXPKGS_GIT, a
# nixpkgs clone, each commit is also checked to be an ancestor of the pin).
bash nix/tests/nixos-facts-check.sh || FAILS=$((FAILS + 1))

# --- 8. every VM test's script, run against real programs in namespaces ------------------------------------
# Each node a set of namespaces with its services (image-cache configured by the module's render.nix, dnsmasq,
# nginx, docker-registry, containerd 2.x from sid, QEMU + iPXE for the netbooting client), the testScript run
# by a stand-in for the test driver, every expected value mutated (nix/tests/vm-replay.py).
source tests/debian-newer.sh
if [ "$(id -u)" = 0 ] && ip netns add ic-nix-probe 2>/dev/null; then
  ip netns del ic-nix-probe
  if ! CTD=$(debian_newer sid containerd) || ! KERNEL=$(debian_kernel); then
    fail "vm-replay: Debian's mirror is needed for containerd 2.x (sid) and the kernel package"
  else
    cargo build --release --locked -q
    export VM_REPLAY_KERNEL=$KERNEL VM_REPLAY_CONTAINERD=$CTD/usr/bin IMAGE_CACHE_BIN=$PWD/target/release/image-cache
    python3 nix/tests/vm-replay.py || FAILS=$((FAILS + 1))
    # The replay's own checks: a wrong expected value fails, a vacuous assertion is caught by its mutant, a
    # systemctl query it cannot mean is refused.
    python3 nix/tests/vm-replay.py --dir nix/tests/vm-replay-fixtures >"$W/fixtures-replay.out" 2>&1 || true
    for want in "FAIL vm-replay wrong-value.nix (assertion failed)" \
      "FAIL vm-replay vacuous.nix (a mutated assertion passed)" "FAIL vm-replay systemctl-show.nix (not replayed)"; do
      grep -qF "$want" "$W/fixtures-replay.out" || { fail "the VM-test replay no longer reports: $want"; tail -20 "$W/fixtures-replay.out"; }
    done
    pass "the VM-test replay fails a wrong expected value, a vacuous assertion and a systemctl query it cannot mean"
  fi
else
  echo "SKIPPED VM-test replay: needs root and network namespaces"
fi

# --- 9. containerd reads the config_path the mirror module writes ------------------------------------------
containerd_sees() { # containerd_sees LABEL BINARY VERSION: the CRI's effective registry.config_path
  local label=$1 bin=$2 version=$3
  eval_json --expr "let r = import ./nixos/render.nix; in r.toTOML (r.merge
      { version = $version; plugins.\"io.containerd.grpc.v1.cri\".cni.bin_dir = \"/opt/cni/bin\"; }
      (r.containerdSettings { version = $version; dir = \"/etc/containerd/certs.d\"; }))" \
    | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' >"$W/containerd-$label.toml"
  "$bin" -c "$W/containerd-$label.toml" config dump 2>/dev/null | python3 -c '
import sys, tomllib
plugins = tomllib.loads(sys.stdin.read()).get("plugins", {})
cri = plugins.get("io.containerd.cri.v1.images") or plugins.get("io.containerd.grpc.v1.cri") or {}
print(cri.get("registry", {}).get("config_path", ""))'
}
check_containerd() { # check_containerd LABEL BINARY VERSION
  local got
  got=$(containerd_sees "$@")
  if [ "$got" = /etc/containerd/certs.d ]; then pass "containerd $1 with a version $3 file from the mirror module: CRI config_path = $got"
  else fail "containerd $1 with a version $3 file from the mirror module: CRI config_path is '$got'"; cat "$W/containerd-$1.toml"; fi
}
if command -v containerd >/dev/null; then
  check_containerd "$(containerd --version | awk '{print $3}')" containerd 2
else
  echo "SKIPPED containerd config check with Debian's containerd: not installed"
fi
if CTD2=$(debian_newer sid containerd); then
  check_containerd "$("$CTD2/usr/bin/containerd" --version | awk '{print $3}')-v2" "$CTD2/usr/bin/containerd" 2
  check_containerd "$("$CTD2/usr/bin/containerd" --version | awk '{print $3}')-v3" "$CTD2/usr/bin/containerd" 3
else
  echo "SKIPPED containerd 2.x config check: Debian sid's containerd could not be fetched"
fi

# --- 10. the modules under lib.evalModules ----------------------------------------------------------------
if [ -n "${NIXPKGS_LIB:-}" ] && [ -d "$NIXPKGS_LIB/lib" ]; then
  out=$(eval_json nix/tests/module-eval.nix)
  if [ "$out" = '{"failures":[]}' ]; then pass "nix/tests/module-eval.nix (lib.evalModules with $NIXPKGS_LIB)"; else fail "module-eval: $out"; fi
  # nix/container.nix against the image contrib/container/build.sh makes (with this debug binary).
  IMAGE_CACHE_BIN=$BIN bash contrib/container/build.sh "$W/oci" nix-check >/dev/null
  python3 - "$W/oci" >"$W/container-config.json" <<'PY'
import json, os, sys
d = sys.argv[1]
blob = lambda digest: os.path.join(d, "blobs", *digest.split(":"))
index = json.load(open(os.path.join(d, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
sys.stdout.write(open(blob(manifest["config"]["digest"])).read())
PY
  out=$(CONTAINER_CONFIG=$W/container-config.json eval_json nix/tests/container-eval.nix)
  if [ "$out" = '{"failures":[]}' ]; then pass "nix/container.nix matches contrib/container/build.sh's image"; else fail "container-eval: $out"; fi
else
  echo "SKIPPED nix/tests/module-eval.nix: NIXPKGS_LIB does not point at a nixpkgs lib checkout (module evaluation with lib.evalModules not run)"
fi
# --- 11. the package's check phase in a replayed Nix build sandbox ----------------------------------------
bash nix/tests/sandbox-check.sh --canary || FAILS=$((FAILS + 1))
bash nix/tests/sandbox-check.sh || FAILS=$((FAILS + 1))

echo "SKIPPED (need a Nix binary cache and KVM): nix build, nix flake check, the VM tests in real VMs"
echo "nix checks: $FAILS failure(s)"
[ "$FAILS" = 0 ]
