# The image-cache binary. Crates come from Cargo.lock (importCargoLock): no vendor hash to maintain.
{ lib, rustPlatform }:
let
  cargo = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = cargo.package.name;
  version = cargo.package.version;
  src = lib.fileset.toSource {
    root = ../.;
    # What cargo needs to build and test every target: the fuzz driver is a declared example, the tests
    # read examples/ and contrib/. tests/nix.sh builds a copy of exactly these paths.
    fileset = lib.fileset.unions [
      ../Cargo.toml ../Cargo.lock ../clippy.toml ../src ../tests ../fuzz ../examples ../contrib
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The unit tests and the one integration target (tests/it): servers on loopback addresses only. Tests
  # that need root or unshare(1) skip themselves with a message; the end-to-end scenarios (network
  # namespaces, QEMU) run in the project's CI (.ci/run), not in the build sandbox.
  cargoTestFlags = [ "--lib" "--test" "it" ];
  meta = {
    description = cargo.package.description;
    license = lib.licenses.mit;
    mainProgram = "image-cache";
    platforms = lib.platforms.linux;
  };
}
