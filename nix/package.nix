# The image-cache binary. Crates come from Cargo.lock (importCargoLock): no vendor hash to maintain.
{ lib, rustPlatform }:
let
  cargo = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  # Only git-tracked files: a build from a checkout must not pick up target/ or other ignored output. In a
  # flake, or a source fetched without .git, the tree already is exactly what git tracks.
  tracked = if builtins.pathExists ../.git then lib.fileset.gitTracked ../. else ../.;
in
rustPlatform.buildRustPackage {
  pname = cargo.package.name;
  version = cargo.package.version;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.intersection tracked (lib.fileset.unions (import ./source-paths.nix));
  };
  cargoLock.lockFile = ../Cargo.lock;
  # What the check phase runs (nix/tests/sandbox-check.sh runs exactly this in a replayed build sandbox).
  inherit (import ./cargo-test.nix) cargoTestFlags checkFlags;
  meta = {
    description = cargo.package.description;
    license = lib.licenses.mit;
    mainProgram = "image-cache";
    platforms = lib.platforms.linux;
  };
}
