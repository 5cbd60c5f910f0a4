# nix/container.nix evaluated with a stand-in dockerTools that returns its arguments (tests/nix.sh, with
# NIXPKGS_LIB): the image's user, entrypoint, command, port and volume are those of the image
# contrib/container/build.sh made (its config JSON at $CONTAINER_CONFIG), the one tests/e2e/container.sh
# runs. `{ failures = [ … ]; }`.
let
  lib = import (builtins.getEnv "NIXPKGS_LIB" + "/lib");
  drv = name: {
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    inherit name;
  };
  image-cache = drv "image-cache-0.1.0" // {
    version = "0.1.0";
    meta.mainProgram = "image-cache";
  };
  image = import ../container.nix {
    inherit lib image-cache;
    dockerTools.buildLayeredImage = args: args;
    cacert = drv "cacert";
  };
  layout = (builtins.fromJSON (builtins.readFile (builtins.getEnv "CONTAINER_CONFIG"))).config;
  checks = {
    user = image.config.User == layout.User;
    entrypoint = image.config.Entrypoint == [ "${image-cache}/bin/image-cache" ];
    cmd = image.config.Cmd == layout.Cmd;
    volume = builtins.attrNames image.config.Volumes == builtins.attrNames layout.Volumes;
    port = builtins.attrNames image.config.ExposedPorts == builtins.attrNames layout.ExposedPorts;
    state-owned = lib.hasInfix "chown 65532:65532 var/lib/image-cache" image.fakeRootCommands;
    config-file = lib.hasInfix "etc/image-cache/config.toml" image.fakeRootCommands;
  };
in
{
  failures = builtins.attrNames (lib.filterAttrs (_: ok: !ok) checks);
}
