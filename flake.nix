{
  description = "image-cache: DNS interceptor, PXE image cache and OCI pull-through mirror for bare-metal partitions";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      vmTest = pkgs: file: pkgs.testers.runNixOSTest (import file { inherit self; });
    in
    {
      packages = forAll (pkgs: {
        image-cache = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.image-cache;
      });

      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = nixpkgs.lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      });

      overlays.default = final: _prev: {
        image-cache = final.callPackage ./nix/package.nix { };
      };

      # Imported functions (not paths): nix 2.8's `flake check` refuses a module given as a path.
      nixosModules = {
        default = { pkgs, lib, ... }: {
          imports = [ (import ./nixos/module.nix) ];
          services.imageCache.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
        containerd-mirror = import ./nixos/containerd-mirror.nix;
      };

      checks = forAll (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      } // nixpkgs.lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
        # QEMU's virtio-net iPXE ROM and bzImage: the PXE scene is x86_64.
        vm-pxe = vmTest pkgs ./nixos/tests/pxe.nix;
      } // {
        vm-dns = vmTest pkgs ./nixos/tests/dns.nix;
        vm-http = vmTest pkgs ./nixos/tests/http.nix;
        vm-sync = vmTest pkgs ./nixos/tests/sync.nix;
        vm-registry = vmTest pkgs ./nixos/tests/registry.nix;
        vm-failover = vmTest pkgs ./nixos/tests/failover.nix;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [ pkgs.clippy pkgs.rustfmt pkgs.rust-analyzer pkgs.nixfmt ];
        };
      });

      formatter = forAll (pkgs: pkgs.nixfmt);
    };
}
