# The replay's own check (tests/nix.sh): an assertion whose expected value is wrong must fail the replay.
{ self }: {
  name = "replay-fixture-wrong-value";
  nodes.machine = { pkgs, ... }: { environment.systemPackages = [ pkgs.curl ]; };
  testScript = ''
    machine.succeed("echo 42 | grep -x 41")
  '';
}
