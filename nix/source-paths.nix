# What the package is built from, relative to the repository: what cargo needs to build and test every target
# (the fuzz driver is a declared example; the tests read examples/, contrib/, ARCHITECTURE.md's layer table and
# docs/configuration.md's defaults).
# nix/package.nix keeps the git-tracked files under these paths; nix/tests/sandbox-check.sh copies exactly
# those into its replayed build sandbox. Builtins only, so nix 2.8 can read it.
[ ../Cargo.toml ../Cargo.lock ../clippy.toml ../src ../tests ../fuzz ../examples ../contrib ../ARCHITECTURE.md ../docs ]
