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
    fileset = lib.fileset.unions [ ../Cargo.toml ../Cargo.lock ../src ../tests ../clippy.toml ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The sandbox has no network namespace tricks, no root and no second loopback address: run the unit
  # tests and the in-process integration tests that need only 127.0.0.1; the tests that need 127.0.0.2,
  # unshare or the released binary's signals run in the project's CI (.ci/run) instead.
  cargoTestFlags = [ "--lib" "--test" "registry" "--test" "registry_pull" "--test" "http_cache" "--test" "sync" ];
  meta = {
    description = cargo.package.description;
    license = lib.licenses.mit;
    mainProgram = "image-cache";
    platforms = lib.platforms.linux;
  };
}
