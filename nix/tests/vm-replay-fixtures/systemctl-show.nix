# The replay's own check (tests/nix.sh): a systemctl call the replay cannot mean as NixOS means it must stop
# the test as not replayed, never pass or fail on a pretended answer.
{ self }: {
  name = "replay-fixture-systemctl-show";
  nodes.machine = { pkgs, ... }: { environment.systemPackages = [ pkgs.curl ]; };
  testScript = ''
    machine.fail("systemctl show -p LoadCredential image-cache | grep -q hmac")
  '';
}
