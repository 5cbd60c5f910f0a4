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
        # The OCI image for Kubernetes (contrib/kubernetes); contrib/container/build.sh makes the same without Nix.
        container = pkgs.callPackage ./nix/container.nix {
          image-cache = self.packages.${pkgs.stdenv.hostPlatform.system}.image-cache;
        };
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

      # Modules import their files by path, so option declarations and errors name nixos/module.nix and
      # `disabledModules` can find them; the outputs themselves stay modules (nix flake check refuses a
      # bare path). The package is built from the user's own nixpkgs: one nixpkgs closure, theirs.
      nixosModules = {
        default = { pkgs, lib, ... }: {
          imports = [ ./nixos/module.nix ];
          services.imageCache.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };
        containerd-mirror = { imports = [ ./nixos/containerd-mirror.nix ]; };
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
