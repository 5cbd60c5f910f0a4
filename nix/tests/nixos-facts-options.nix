# The option declarations (name → type description, as the NixOS manual prints them) of a nixpkgs checkout
# under the prefixes the VM tests and this flake's modules touch. Run by nix/tests/nixos-facts-update.sh.
{ nixpkgs }:
let
  lib = import (nixpkgs + "/lib");
  # A test node: NixOS with the QEMU VM module, as the test framework builds it.
  node = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    system = "x86_64-linux";
    modules = [ (nixpkgs + "/nixos/modules/virtualisation/qemu-vm.nix") ];
  };
  prefixes = [
    "services.dnsmasq" "services.nginx" "services.dockerRegistry" "virtualisation"
    "networking.interfaces" "networking.firewall" "networking.useDHCP" "networking.nameservers"
    "networking.hosts" "networking.extraHosts" "networking.hostName" "networking.defaultGateway"
    "networking.usePredictableInterfaceNames" "systemd.services" "environment.etc"
    "environment.systemPackages" "assertions" "warnings"
  ];
  wanted = o: builtins.any (p: o.name == p || lib.hasPrefix (p + ".") o.name) prefixes;
in
builtins.listToAttrs (map (o: { inherit (o) name; value = o.type; })
  (builtins.filter wanted (lib.optionAttrSetToDocList node.options)))
