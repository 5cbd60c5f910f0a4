# The replay's own check (tests/nix.sh): an assertion that holds whatever its expected value is (here
# `|| true`) must be reported as a mutant that passed.
{ self }: {
  name = "replay-fixture-vacuous";
  nodes.machine = { pkgs, ... }: { environment.systemPackages = [ pkgs.curl ]; };
  testScript = ''
    machine.succeed("echo 42 | grep -x 42 || true")
  '';
}
