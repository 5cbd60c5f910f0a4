# Planted defects: image-cache reaches a registry by its test node's name; a testScript that does not parse.
{ self }:
let c = import ../../../nixos/tests/common.nix { inherit self; };
in {
  name = "lint-by-name";
  nodes = {
    registry = { services.dockerRegistry.enable = true; };
    cache = { ... }: {
      imports = [ self.nixosModules.default ];
      services.imageCache = {
        enable = true;
        settings = { dns.enabled = false; registry.upstreams."registry.test:5000" = "http://registry:5000"; };
      };
    };
    client = { services.imageCache.containerdMirror.enable = true; };
  };
  testScript = ''
    start_all(
  '';
}
