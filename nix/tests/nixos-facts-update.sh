#!/usr/bin/env bash
# Regenerates nix/tests/nixos-facts.json from a nixpkgs checkout, normally the one flake.lock pins:
#   git clone https://github.com/NixOS/nixpkgs && git -C nixpkgs checkout <locked rev>
#   nix/tests/nixos-facts-update.sh ./nixpkgs
# Options: every declaration under the prefixes of nix/tests/nixos-facts-options.nix (needs a Nix that can
# evaluate that nixpkgs). Driver: the public methods of the test driver's machine classes and the globals a
# testScript sees, read from its Python sources with `ast`.
set -euo pipefail
[ $# = 1 ] && [ -d "$1/nixos" ] || { echo "usage: $0 /path/to/nixpkgs-checkout" >&2; exit 2; }
NIXPKGS=$(realpath "$1")
cd "$(dirname "$0")/../.."
OPTIONS=$(mktemp)
trap 'rm -f "$OPTIONS"' EXIT
nix-instantiate --eval --strict --json --arg nixpkgs "$NIXPKGS" nix/tests/nixos-facts-options.nix >"$OPTIONS"
python3 nix/tests/nixos-facts-write.py "$NIXPKGS" "$OPTIONS" nix/tests/nixos-facts.json
