# The check phase's test selection, read by nix/package.nix and by nix/tests/sandbox-check.sh (which runs them in
# a replayed Nix build sandbox). The unit tests and the one integration target (tests/it): servers on loopback
# addresses only; tests that need root or unshare(1) skip themselves with a message. The end-to-end scenarios
# (network namespaces, QEMU) run in the project's CI (.ci/run), not in the build sandbox. Builtins only.
{
  cargoTestFlags = [ "--lib" "--test" "it" ];
  checkFlags = [ ];
}
