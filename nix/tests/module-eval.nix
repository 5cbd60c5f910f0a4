# Evaluates nixos/module.nix and nixos/containerd-mirror.nix with nixpkgs' module system against stubs
# of the NixOS options they touch and of `pkgs`. Needs a nixpkgs lib checkout (third-party code, never
# committed): NIXPKGS_LIB=/path/to/nixpkgs.lib nix-instantiate --eval --strict --json nix/tests/module-eval.nix
# Prints { failures = [ … ]; } — CI requires it empty, and skips this file visibly without NIXPKGS_LIB.
let
  libPath = builtins.getEnv "NIXPKGS_LIB";
  lib = import (if libPath == "" then throw "set NIXPKGS_LIB to a nixpkgs lib checkout" else "${libPath}/lib");
  inherit (lib) types mkOption;
  render = import ../../nixos/render.nix;

  flakePackage = fakeDrv "image-cache-from-flake-0.1.0" { pname = "image-cache"; version = "0.1.0"; meta.mainProgram = "image-cache"; };
  # The flake's outputs, called by hand with a stub nixpkgs (nix 2.8 cannot fetch the real one).
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: pkgs // {
        stdenv.hostPlatform.system = system;
        callPackage = _: _: flakePackage;
        testers.runNixOSTest = t: fakeDrv "vm-test-${t.name}" { };
        mkShell = _: fakeDrv "shell" { };
        nixfmt = fakeDrv "nixfmt" { };
        clippy = null; rustfmt = null; rust-analyzer = null;
      });
    };
  };
  fakeDrv = name: extra: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; } // extra;
  pkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    image-cache = fakeDrv "image-cache-0.1.0" { pname = "image-cache"; version = "0.1.0"; meta.mainProgram = "image-cache"; };
    containerd = fakeDrv "containerd-2.1.4" { version = "2.1.4"; };
    formats.toml = { }: {
      type = types.attrsOf types.anything // { description = "TOML value"; };
      generate = name: value: builtins.toFile name (render.toTOML value);
    };
    writeText = name: text: fakeDrv name { inherit text; };
    writeShellScript = name: text: fakeDrv name { inherit text; };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
  };

  # Just enough of NixOS for the modules to be evaluated.
  stubs = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule {
          options.text = mkOption { type = types.str; default = ""; };
          options.source = mkOption { type = types.unspecified; default = null; };
        });
        default = { };
      };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      networking.firewall.allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
        default = { };
      };
      virtualisation.containerd.package = mkOption { type = types.unspecified; default = pkgs.containerd; };
      virtualisation.containerd.settings = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
  };

  eval = config: lib.evalModules {
    modules = [ stubs flake.nixosModules.default flake.nixosModules.containerd-mirror { inherit config; } ];
    specialArgs = { inherit pkgs; };
  };
  cfgOf = config: (eval config).config;
  fails = config: !(builtins.tryEval (builtins.deepSeq (cfgOf config).systemd.services (cfgOf config).services.imageCache.settings)).success;
  failedAssertions = c: map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  check = name: cond: if cond then [ ] else [ name ];
  contains = needle: text: builtins.replaceStrings [ needle ] [ "" ] text != text;

  node = cfgOf {
    services.imageCache = {
      enable = true;
      openFirewall = true;
      hmacFile = "/run/secrets/hmac";
      settings = {
        nodes.self = "10.0.0.1";
        http.admin_listen = [ "10.0.0.1:9090" ];
        domains = [ { name = "images.test"; on_miss = "fill"; } ];
        registry.upstreams."docker.io" = "https://registry-1.docker.io";
        sync.enabled = true;
        log.level = "debug";
      };
    };
  };
  svc = node.systemd.services.image-cache.serviceConfig;
  rendered = node.services.imageCache.configFile.env.final.text;
  checked = node.services.imageCache.configFile.env.unchecked.text;

  laptop = cfgOf { services.imageCache = { enable = true; settings = { dns.enabled = false; passthrough.enabled = false; http.listen = [ "127.0.0.1:8080" ]; }; }; };
  mirror = cfgOf { services.imageCache.containerdMirror = { enable = true; mirrors = [ "http://10.0.0.1:80/" "http://10.0.0.2" ]; registries = [ "_default" "ghcr.io" ]; }; };
  mirror1 = cfgOf {
    virtualisation.containerd.package = fakeDrv "containerd-1.7.20" { version = "1.7.20"; };
    services.imageCache.containerdMirror = { enable = true; mirrors = [ "http://cache" ]; };
  };
in
{
  failures =
    check "the CLI finds the service's config at its default path" (node.environment.etc."image-cache/config.toml".source == node.services.imageCache.configFile)
    ++ check "ExecStart runs the flake's package with the checked config" (svc.ExecStart == "/nix/store/00000000000000000000000000000000-image-cache-from-flake-0.1.0/bin/image-cache serve --config ${node.services.imageCache.configFile}")
    ++ check "flake: checks per system, pxe on x86_64 only"
      (flake.checks.x86_64-linux ? vm-pxe && !(flake.checks.aarch64-linux ? vm-pxe)
        && builtins.all (n: flake.checks.aarch64-linux ? ${n}) [ "package" "vm-dns" "vm-http" "vm-sync" "vm-registry" "vm-failover" ])
    ++ check "flake: app runs the package" (flake.apps.x86_64-linux.default.program == "${flakePackage}/bin/image-cache")
    ++ check "flake: overlay adds image-cache" ((flake.overlays.default pkgs pkgs) ? image-cache)
    ++ check "notify + watchdog + restart" (svc.Type == "notify" && svc.WatchdogSec == "30s" && svc.Restart == "on-failure")
    ++ check "DynamicUser, StateDirectory, CAP_NET_BIND_SERVICE only"
      (svc.DynamicUser && svc.StateDirectory == "image-cache" && svc.CapabilityBoundingSet == [ "CAP_NET_BIND_SERVICE" ] && svc.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ])
    ++ check "LoadCredential for the HMAC key only" (svc.LoadCredential == [ "hmac:/run/secrets/hmac" ])
    ++ check "the config names the credential, not the secret's path" (contains "hmac_file = \"/run/credentials/image-cache.service/hmac\"" rendered && !(contains "/run/secrets" rendered))
    ++ check "check-config sees the required secret keys" (contains "hmac_file" checked && contains "[sync]" checked)
    ++ check "rendered config round-trips" ((builtins.fromTOML rendered).registry.upstreams."docker.io" == "https://registry-1.docker.io" && (builtins.fromTOML rendered).log.level == "debug")
    ++ check "openFirewall opens the settings' ports" (node.networking.firewall.allowedTCPPorts == [ 53 80 443 9090 ] && node.networking.firewall.allowedUDPPorts == [ 53 ])
    ++ check "no failed assertion on a complete node" (failedAssertions node == [ ])
    ++ check "firewall closed unless asked" (laptop.networking.firewall.allowedTCPPorts == [ ])
    ++ check "disabled module does nothing" ((cfgOf { }).systemd.services == { })
    ++ check "assertion: wildcard DNS without nodes.self"
      (builtins.any (m: contains "nodes.self" m) (failedAssertions (cfgOf { services.imageCache.enable = true; })))
    ++ check "assertion: v1 sync without hmacFile"
      (builtins.any (m: contains "hmacFile" m) (failedAssertions (cfgOf { services.imageCache = { enable = true; settings = { nodes.self = "10.0.0.1"; sync.enabled = true; }; }; })))
    ++ check "type error: dns.listen must be a list of strings" (fails { services.imageCache = { enable = true; settings.dns.listen = 53; }; })
    ++ check "type error: unknown sync.api" (fails { services.imageCache = { enable = true; settings.sync.api = "v3"; }; })
    ++ check "type error: a secret given as a Nix path (it would be copied into the store)" (fails { services.imageCache = { enable = true; hmacFile = ./module-eval.nix; }; })
    ++ check "type error: relative secret path" (fails { services.imageCache = { enable = true; hmacFile = "secrets/hmac"; }; })
    ++ check "type error: unknown module option" (fails { services.imageCache = { enable = true; nosuch = 1; }; })
    ++ check "state_dir is read-only" (fails { services.imageCache = { enable = true; settings.state_dir = "/tmp"; }; })
    ++ check "token file is seeded into the state dir" ((cfgOf { services.imageCache = { enable = true; tokenFile = "/run/t"; settings.nodes.self = "1.1.1.1"; }; }).systemd.services.image-cache.serviceConfig ? ExecStartPre)
    ++ check "mirror: hosts.toml per registry"
      (mirror.environment.etc."containerd/certs.d/_default/hosts.toml".text == render.hostsToml { mirrors = [ "http://10.0.0.1:80" "http://10.0.0.2" ]; }
        && mirror.environment.etc ? "containerd/certs.d/ghcr.io/hosts.toml")
    ++ check "mirror: containerd 2 config path (config v3)" (mirror.virtualisation.containerd.settings.plugins."io.containerd.cri.v1.images".registry.config_path == "/etc/containerd/certs.d")
    ++ check "mirror: containerd 1.x config path (config v2)" (mirror1.virtualisation.containerd.settings.plugins."io.containerd.grpc.v1.cri".registry.config_path == "/etc/containerd/certs.d")
    ++ check "mirror: bad URL refused" (!(builtins.tryEval (builtins.deepSeq (cfgOf { services.imageCache.containerdMirror = { enable = true; mirrors = [ "10.0.0.1" ]; }; }).environment.etc true)).success);
}
