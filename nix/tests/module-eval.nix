# Evaluates nixos/module.nix and nixos/containerd-mirror.nix with nixpkgs' module system against stubs
# of the NixOS options they touch and of `pkgs`. Needs a nixpkgs lib checkout (third-party code, never
# committed): NIXPKGS_LIB=/path/to/nixpkgs.lib nix-instantiate --eval --strict --json nix/tests/module-eval.nix
# Prints { failures = [ … ]; } — CI requires it empty, and skips this file visibly without NIXPKGS_LIB.
let
  libPath = builtins.getEnv "NIXPKGS_LIB";
  lib = import (if libPath == "" then throw "set NIXPKGS_LIB to a nixpkgs lib checkout" else "${libPath}/lib");
  inherit (lib) types mkOption;
  render = import ../../nixos/render.nix;

  userPackage = fakeDrv "image-cache-from-users-pkgs-0.1.0" { pname = "image-cache"; version = "0.1.0"; meta.mainProgram = "image-cache"; };
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
    stdenv.buildPlatform.canExecute = _: true;
    # The module's default package: built by the user's own nixpkgs, never the flake's.
    callPackage = _: _: userPackage;
    image-cache = fakeDrv "image-cache-0.1.0" { pname = "image-cache"; version = "0.1.0"; meta.mainProgram = "image-cache"; };
    containerd = fakeDrv "containerd-2.1.4" { version = "2.1.4"; };
    formats.toml = { }: {
      type = types.attrsOf types.anything // { description = "TOML value"; };
      generate = name: value: fakeDrv name { text = render.toTOML value; };
    };
    writeText = name: text: fakeDrv name { inherit text; };
    writeShellScript = name: text: fakeDrv name { inherit text; };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
  };

  # The NixOS options the modules touch, declared from nix/tests/nixos-facts.json (names and types as
  # nixpkgs declares them), so a definition or a read of an option nixpkgs lacks fails here as on NixOS.
  facts = builtins.fromJSON (builtins.readFile ./nixos-facts.json);
  entries = map (k: { path = lib.splitString "." k; type = facts.options.${k}; }) (builtins.attrNames facts.options);
  hasPrefix = lib.hasPrefix;
  after = p: t: lib.removePrefix p t;
  typeOf = t:
    if hasPrefix "null or " t then types.nullOr (typeOf (after "null or " t))
    else if t == "boolean" then types.bool
    else if t == "string" || hasPrefix "(optionally newline-terminated)" t then types.str
    else if hasPrefix "strings concatenated" t then types.lines
    else if hasPrefix "16 bit unsigned" t then types.port
    else if t == "signed integer" || hasPrefix "positive integer" t || hasPrefix "unsigned integer, meaning" t then types.int
    else if t == "package" then types.package
    else if t == "path" then types.path
    else if hasPrefix "list of " t then types.listOf (typeOf (after "list of " t))
    else if hasPrefix "attribute set of" t || t == "TOML value" then types.attrsOf types.anything
    else types.anything;
  defaultOf = t:
    if hasPrefix "null or " t then { default = null; }
    else if hasPrefix "list of " t then { default = [ ]; }
    else if hasPrefix "attribute set of" t || t == "TOML value" || hasPrefix "open submodule" t then { default = { }; }
    else if t == "boolean" then { default = false; }
    else { };
  # Flat entries → nested option declarations; <name> and * become attrsOf/listOf submodules.
  declare = es:
    let
      heads = lib.unique (map (e: builtins.head e.path) es);
      one = h:
        let
          mine = builtins.filter (e: builtins.head e.path == h) es;
          self = builtins.filter (e: builtins.length e.path == 1) mine;
          kids = map (e: e // { path = builtins.tail e.path; }) (builtins.filter (e: builtins.length e.path > 1) mine);
          wild = w: map (e: e // { path = builtins.tail e.path; }) (builtins.filter (e: builtins.head e.path == w) kids);
          sub = es': types.submodule { freeformType = types.attrsOf types.anything; options = declare es'; };
        in
        if self == [ ] then declare kids
        else if kids == [ ] then mkOption ({ type = typeOf (builtins.head self).type; } // defaultOf (builtins.head self).type)
        else if wild "<name>" != [ ] then mkOption { type = types.attrsOf (sub (wild "<name>")); default = { }; }
        else if wild "*" != [ ] then mkOption { type = types.listOf (sub (wild "*")); default = [ ]; }
        else mkOption { type = sub kids; default = { }; };
    in
    lib.genAttrs heads one;
  stubs.options = declare entries;

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
        registry.prefetch = [ "docker.io/library/nginx:1.27" ];
        registry.prefetch_platforms = [ "linux/amd64" ];
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
  mirror3 = cfgOf {
    virtualisation.containerd.settings.version = 3;
    services.imageCache.containerdMirror = { enable = true; mirrors = [ "http://cache" ]; };
  };
in
{
  failures =
    check "the CLI finds the service's config at its default path" (node.environment.etc."image-cache/config.toml".source == node.services.imageCache.configFile)
    ++ check "ExecStart runs the package built from the user's nixpkgs with the checked config" (svc.ExecStart == "${userPackage}/bin/image-cache serve --config ${node.services.imageCache.configFile}")
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
    ++ check "typed prefetch options render as registry.prefetch*" ((builtins.fromTOML rendered).registry.prefetch == [ "docker.io/library/nginx:1.27" ] && (builtins.fromTOML rendered).registry.prefetch_platforms == [ "linux/amd64" ] && !((builtins.fromTOML rendered).registry ? prefetch_schedule))
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
    ++ check "mirror: NixOS's version 2 file gets the key containerd 1.x reads and 2.x migrates, and only that"
      (mirror.virtualisation.containerd.settings.plugins == { "io.containerd.grpc.v1.cri".registry.config_path = "/etc/containerd/certs.d"; })
    ++ check "mirror: a version 3 file gets containerd 2's own key, and only that"
      (mirror3.virtualisation.containerd.settings.plugins == { "io.containerd.cri.v1.images".registry.config_path = "/etc/containerd/certs.d"; })
    ++ check "assertion: wildcard :53 beside systemd-resolved's stub listener"
      (builtins.any (m: contains "systemd-resolved" m)
        (failedAssertions (cfgOf { services.resolved.enable = true; services.imageCache = { enable = true; settings.nodes.self = "10.0.0.1"; }; })))
    ++ check "assertion: containerd-mirror without NixOS's containerd"
      (builtins.any (m: contains "virtualisation.containerd.enable" m) (failedAssertions mirror))
    ++ check "assertion: containerd-mirror with NixOS's containerd"
      (failedAssertions (cfgOf { virtualisation.containerd.enable = true; services.imageCache.containerdMirror = { enable = true; mirrors = [ "http://c" ]; }; }) == [ ])
    ++ check "mirror: bad URL refused" (!(builtins.tryEval (builtins.deepSeq (cfgOf { services.imageCache.containerdMirror = { enable = true; mirrors = [ "10.0.0.1" ]; }; }).environment.etc true)).success);
}
