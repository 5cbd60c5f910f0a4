#!/usr/bin/env bash
# Checks the provenance of nix/tests/nixos-facts.json against a nixpkgs git clone: every nixpkgs commit a
# source names must be an ancestor of the flake.lock pin, and the pin must be on the nixos-25.11 branch
# (a fact read at a later master is a defect). Sources marked "later than the pin" are reported, not failed:
# the facts file already says what of them is not relied on.
#   NIXPKGS_GIT=/path/to/nixpkgs nix/tests/nixos-facts-check.sh
# Without NIXPKGS_GIT it only checks that every source names a file, a commit and what is known at the pin.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 - "${NIXPKGS_GIT:-}" <<'PY'
import json, re, subprocess, sys
git = sys.argv[1]
facts = json.load(open("nix/tests/nixos-facts.json"))
pin = json.load(open("flake.lock"))["nodes"]["nixpkgs"]["locked"]["rev"]
assert facts["nixpkgs_pin"] == pin, f"nixos-facts.json names pin {facts['nixpkgs_pin']}, flake.lock {pin}"
bad = []
for s in facts["taken_from"]["sources"]:
    for k in ("file", "commit", "used_for", "at_pin"):
        if not s.get(k):
            bad.append(f"{s.get('file')}: no {k}")
    if not re.match(r"(verified|content-dated|later than the pin|older than the pin|unverified|not read)", s["at_pin"]):
        bad.append(f"{s['file']}: at_pin must say what is known: {s['at_pin']!r}")
if bad:
    print("FAIL nixos-facts.json provenance:", *bad, sep="\n  "); sys.exit(1)
if not git:
    print("PASS nixos-facts.json: every source names its file, commit and standing at the pin "
          "(SKIPPED the ancestry check: NIXPKGS_GIT is not a nixpkgs clone)")
    sys.exit(0)
def run(*a):
    return subprocess.run(["git", "-C", git, *a], capture_output=True, text=True)
if run("merge-base", "--is-ancestor", pin, "origin/nixos-25.11").returncode != 0:
    print(f"FAIL the pin {pin} is not on origin/nixos-25.11 in {git}"); sys.exit(1)
fails = 0
for s in facts["taken_from"]["sources"]:
    c = s["commit"]
    if not re.fullmatch(r"[0-9a-f]{40}", c) or s["file"].startswith("lib/ ("):
        continue
    ok = run("merge-base", "--is-ancestor", c, pin).returncode == 0
    later = s["at_pin"].startswith("later than the pin")
    if ok and later:
        print(f"FAIL {s['file']} @ {c}: marked later than the pin but is an ancestor of it"); fails += 1
    elif not ok and not later:
        print(f"FAIL {s['file']} @ {c}: not an ancestor of the pin {pin}"); fails += 1
    else:
        print(f"PASS {s['file']} @ {c[:12]}: {'later than the pin, as marked' if later else 'an ancestor of the pin'}")
sys.exit(1 if fails else 0)
PY
