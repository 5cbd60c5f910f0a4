# services.imageCache: a hardened image-cache node (DNS interceptor, HTTP file cache, metal-api sync,
# containerd registry mirror). RFC 42 `settings` (freeform TOML; typed options for the keys set most),
# secrets as file *paths* handed over with LoadCredential, the rendered config checked at build time.
# The rendering logic is in ./render.nix (builtins only, tested by nix/tests/render.nix); the TOML file
# itself is written by nixpkgs' formats.toml.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.imageCache;
  render = import ./render.nix;
  toml = pkgs.formats.toml { };

  secretPath = description: mkOption {
    type = types.nullOr (types.strMatching "/.+");
    default = null;
    example = "/run/secrets/image-cache/key";
    description = ''
      ${description} An absolute path read by systemd (LoadCredential) when the service starts: give a
      string, not a Nix path, so the secret never enters the Nix store.
    '';
  };
  secrets = {
    hmac = cfg.hmacFile;
    token = cfg.tokenFile;
    "registry-credentials" = cfg.registryCredentialsFile;
    "admin-token" = cfg.adminTokenFile;
  };

  listen = default: description: mkOption {
    type = types.listOf types.str;
    inherit default description;
  };
  section = options: mkOption {
    default = { };
    type = types.submodule { freeformType = toml.type; inherit options; };
    description = "See docs/configuration.md; unknown keys are refused by the service.";
  };
  optional = type: description: mkOption { type = types.nullOr type; default = null; inherit description; };

  settings = render.finalSettings cfg.settings secrets;
  # Checked with the binary's own parser at build time, by a binary that runs on the build machine (a
  # cross-built package cannot); the registry credentials file lives in /run/credentials, which exists only
  # when the unit runs, so the check sees the config without it.
  checker =
    if pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then cfg.package
    else pkgs.buildPackages.callPackage ../nix/package.nix { };
  checkedConfig = pkgs.runCommand "image-cache.toml"
    {
      nativeBuildInputs = [ checker ];
      unchecked = toml.generate "image-cache-unchecked.toml" (render.dropNulls (render.checkableSettings cfg.settings secrets));
      final = toml.generate "image-cache.toml" (render.dropNulls settings);
    } ''
    image-cache check-config --config "$unchecked" >/dev/null
    cp "$final" "$out"
  '';
in
{
  options.services.imageCache = {
    enable = mkEnableOption "image-cache, the DNS-intercepting image cache and containerd registry mirror";

    package = lib.mkPackageOption pkgs "image-cache" { };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open exactly the ports the settings listen on: HTTP (and admin) TCP, DNS UDP and TCP, passthrough TCP.";
    };

    hmacFile = secretPath "metal-api v1 view HMAC key (`sync.hmac_file`).";
    tokenFile = secretPath "metal-api v2 token (`sync.token_file`); copied once into the state directory, where the service keeps the refreshed token.";
    registryCredentialsFile = secretPath "Docker `config.json` with accounts for upstream registries (`registry.credentials_file`). Whatever these accounts can pull is served to every client of the cache.";
    adminTokenFile = secretPath "Bearer token for `/admin` (`http.admin_token_file`).";

    settings = mkOption {
      default = { };
      description = ''
        image-cache's configuration (TOML), as in docs/configuration.md. Keys not declared here
        pass through as they are; the service refuses unknown keys, and the rendered file is checked with
        `image-cache check-config` when the system is built.
      '';
      example = literalExpression ''
        {
          nodes.self = "10.0.0.1";
          nodes.peers = [ "10.0.0.2" ];
          dns.upstreams = [ "9.9.9.9:53" ];
          domains = [ { name = "images.metal-stack.io"; } ];
          sync = { enabled = true; url = "http://metal-api:8080/metal"; };
        }
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/image-cache";
            readOnly = true;
            description = "Managed by systemd (StateDirectory).";
          };
          http = section {
            listen = listen render.moduleDefaults.http.listen "HTTP listeners (file cache, registry mirror, health, metrics).";
            admin_listen = listen render.moduleDefaults.http.admin_listen "When set, `/health`, `/ready`, `/metrics` and `/admin` only here.";
          };
          dns = section {
            enabled = mkOption { type = types.bool; default = render.moduleDefaults.dns.enabled; description = "Run the DNS interceptor."; };
            listen = listen render.moduleDefaults.dns.listen "DNS listeners (UDP and TCP).";
            upstreams = optional (types.listOf types.str) "Resolvers for forwarded names (`ip:port`); the service's default is 8.8.8.8 and 1.1.1.1.";
            allow = optional (types.listOf types.str) "Client networks (CIDR) answered; others get REFUSED. Default: loopback, RFC 1918, ULA.";
          };
          passthrough = section {
            enabled = mkOption { type = types.bool; default = render.moduleDefaults.passthrough.enabled; description = "TLS passthrough for intercepted names."; };
            listen = listen render.moduleDefaults.passthrough.listen "Passthrough listeners.";
          };
          nodes = section {
            self = optional types.str "This node's internal address (in DNS answers); required when DNS listens on a wildcard address.";
            peers = optional (types.listOf types.str) "The other cache nodes' internal addresses.";
          };
          domains = optional (types.listOf (types.submodule {
            freeformType = toml.type;
            options.name = mkOption { type = types.str; description = "Intercepted domain."; };
          })) "Intercepted domains (`name`, `origin`, `on_miss`, …); the service's default is images.metal-stack.io and github.com.";
          sync = section {
            enabled = mkOption { type = types.bool; default = render.moduleDefaults.sync.enabled; description = "Sync with metal-api on `sync.schedule`."; };
            api = optional (types.enum [ "v1" "v2" ]) "metal-api flavour: v1 (REST + HMAC) or v2 (Connect + token).";
            url = optional types.str "metal-api base URL, base path included.";
          };
          registry = section {
            upstreams = optional (types.attrsOf types.str) "`ns` as containerd sends it → registry base URL.";
            default_upstream = optional types.str "Registry for requests without `ns` or path prefix (Docker's registry-mirrors); `\"\"` refuses them. Default: docker.io when configured.";
            prefetch = optional (types.listOf types.str) "Container images pulled into the store at start-up and on `prefetch_schedule`, pinned while listed (`ghcr.io/org/app:1.2`, `nginx:1.27`).";
            prefetch_schedule = optional types.str "When the prefetch runs again (cron, UTC, 5 fields); default `0 */6 * * *`.";
            prefetch_platforms = optional (types.listOf types.str) "Platforms of an index to prefetch (`linux/amd64`, `linux/arm64/v8`); default: every one.";
          };
        };
      };
    };

    configFile = mkOption {
      type = types.path;
      default = checkedConfig;
      defaultText = literalExpression "the rendered and checked `settings`";
      description = "The TOML file the service reads. Override only to bypass `settings` entirely.";
    };
  };

  config = mkIf cfg.enable {
    assertions = render.assertions cfg.settings secrets { resolvedStub = config.services.resolved.enable; };

    networking.firewall = mkIf cfg.openFirewall (render.firewall cfg.settings);

    environment.systemPackages = [ cfg.package ];
    # The CLI's default config path: `image-cache store ls` or `image-cache sync` run by root on the node read
    # the service's config, find the running server through its admin address and token, and act through it.
    environment.etc."image-cache/config.toml".source = cfg.configFile;

    systemd.services.image-cache = {
      description = "image-cache: DNS interceptor, image cache and registry mirror";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ cfg.configFile ];
      serviceConfig = render.serviceConfig {
        exe = lib.getExe cfg.package;
        configFile = cfg.configFile;
        inherit secrets;
      } // lib.optionalAttrs (cfg.tokenFile != null) {
        ExecStartPre = [ "${pkgs.writeShellScript "image-cache-token-seed" render.tokenSeed}" ];
      };
    };
  };
}
