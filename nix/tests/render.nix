# Pure tests of nixos/render.nix (builtins only; no nixpkgs). `nix-instantiate --eval --strict --json`
# prints { failures = [ … ]; configs = { <node> = "<TOML>"; }; }: CI requires no failures and runs
# `image-cache check-config` on every rendered config.
let
  r = import ../../nixos/render.nix;
  nodes = import ../../nixos/tests/settings.nix;
  check = name: cond: if cond then [ ] else [ name ];
  contains = needle: text: builtins.replaceStrings [ needle ] [ "" ] text != text;

  tricky = {
    state_dir = "/var/lib/image-cache";
    cache.max_size = "50G";
    http = { listen = [ "0.0.0.0:80" "[::]:80" ]; admin_listen = [ "127.0.0.1:9090" ]; };
    dns = { enabled = true; answer_ttl = "30s"; };
    domains = [
      { name = "images.metal-stack.io"; on_miss = "fill"; }
      { name = "github.com"; origin = "https://github.com/metal-stack"; include_subdomains = false; }
    ];
    registry.upstreams = { "docker.io" = "https://registry-1.docker.io"; "registry.test:5000" = "http://r:5000"; };
    sync.excludes = [ "/pull_requests/" "a \"quoted\" \\ path\nnext" ];
    log.level = "info,image_cache=debug";
    nodes.self = "10.0.0.1";
  };
  rendered = r.toTOML tricky;
  secrets = { hmac = "/run/keys/hmac"; token = null; "registry-credentials" = "/run/keys/auth.json"; "admin-token" = null; };
  svc = r.serviceConfig { exe = "/bin/image-cache"; configFile = "/etc/ic.toml"; inherit secrets; };
  fw = r.firewall tricky;
  fwOff = r.firewall { dns.enabled = false; passthrough.enabled = false; http.listen = [ "10.0.0.1:8080" ]; };
  fwDefaults = r.firewall { };
  final = r.finalSettings { dns.listen = [ "10.0.0.1:53" ]; } secrets;
  nodeSecrets.sync.hmac = "/etc/image-cache-test/hmac";
  asserts = s: sec: builtins.filter (a: !a.assertion) (r.assertions s sec { });
  assertsResolved = s: builtins.filter (a: !a.assertion) (r.assertions s { } { resolvedStub = true; });
in
{
  failures =
    check "TOML round-trips through fromTOML" (builtins.fromTOML rendered == tricky)
    ++ check "registry names are quoted keys" (contains "\"registry.test:5000\" = " rendered)
    ++ check "arrays of tables" (contains "\n[[domains]]\n" rendered)
    ++ check "firewall TCP follows the settings" (fw.allowedTCPPorts == [ 53 80 443 9090 ])
    ++ check "firewall UDP is DNS only" (fw.allowedUDPPorts == [ 53 ])
    ++ check "nothing opened for disabled DNS and passthrough" (fwOff == { allowedTCPPorts = [ 8080 ]; allowedUDPPorts = [ ]; })
    ++ check "defaults open 53, 80, 443" (fwDefaults == { allowedTCPPorts = [ 53 80 443 ]; allowedUDPPorts = [ 53 ]; })
    ++ check "LoadCredential only for the secrets that are set"
      (builtins.sort builtins.lessThan svc.LoadCredential == [ "hmac:/run/keys/hmac" "registry-credentials:/run/keys/auth.json" ])
    ++ check "no secret value or path in the config, only credential paths"
      (final.sync.hmac_file == "/run/credentials/image-cache.service/hmac"
        && final.registry.credentials_file == "/run/credentials/image-cache.service/registry-credentials"
        && !(final ? http && final.http ? admin_token_file))
    ++ check "user settings survive the merge" (final.dns.listen == [ "10.0.0.1:53" ] && final.state_dir == "/var/lib/image-cache")
    ++ check "notify, watchdog, restart" (svc.Type == "notify" && svc.WatchdogSec == "30s" && svc.Restart == "on-failure")
    ++ check "dynamic user with only CAP_NET_BIND_SERVICE"
      (svc.DynamicUser && svc.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ] && svc.CapabilityBoundingSet == [ "CAP_NET_BIND_SERVICE" ])
    ++ check "hardening" (svc.ProtectSystem == "strict" && svc.NoNewPrivileges && svc.SystemCallFilter == [ "@system-service" "~@privileged" "~@resources" ])
    ++ check "assertion: wildcard DNS needs nodes.self" (builtins.length (asserts { } { }) == 1)
    ++ check "assertion: satisfied with nodes.self" (asserts { nodes.self = "10.0.0.1"; } { } == [ ])
    ++ check "assertion: v1 sync needs hmacFile" (builtins.length (asserts { nodes.self = "1.2.3.4"; sync.enabled = true; } { }) == 1)
    ++ check "assertion: v2 sync needs tokenFile" (asserts { nodes.self = "1.2.3.4"; sync = { enabled = true; api = "v2"; }; } { token = "/k"; } == [ ])
    ++ check "assertion: wildcard :53 collides with systemd-resolved's stub listener"
      (builtins.length (assertsResolved { nodes.self = "10.0.0.1"; }) == 1
        && builtins.length (assertsResolved { nodes.self = "10.0.0.1"; dns.listen = [ "[::]:53" ]; }) == 1)
    ++ check "assertion: resolved is fine with the node's own addresses or DNS off"
      (assertsResolved { dns.listen = [ "10.0.0.1:53" ]; } == [ ] && assertsResolved { dns.enabled = false; } == [ ]
        && asserts { nodes.self = "10.0.0.1"; } { } == [ ])
    ++ check "assertion: containerd-mirror without NixOS's containerd"
      (builtins.length (builtins.filter (a: !a.assertion) (r.containerdMirrorAssertions { containerdEnabled = false; })) == 1
        && builtins.filter (a: !a.assertion) (r.containerdMirrorAssertions { containerdEnabled = true; }) == [ ])
    ++ check "the build-time check keeps required secret keys but not the credentials file"
      (let k = r.checkableSettings { } secrets; in k.sync.hmac_file == final.sync.hmac_file && !(k ? registry))
    ++ check "unset typed options (null) are dropped, in tables and lists"
      (r.dropNulls { a = null; b = { c = null; d = 1; }; e = [ null 2 ]; } == { b.d = 1; e = [ 2 ]; })
    ++ check "containerd: NixOS's version 2 file gets the CRI key 1.x reads and 2.x migrates"
      (r.containerdSettings { version = 2; dir = "/d"; } == { version = 2; plugins."io.containerd.grpc.v1.cri".registry.config_path = "/d"; })
    ++ check "containerd: a version 3 file gets the CRI images plugin's key"
      (r.containerdSettings { version = 3; dir = "/d"; } == { version = 3; plugins."io.containerd.cri.v1.images".registry.config_path = "/d"; })
    ++ check "containerd: an unknown config version is refused"
      (!(builtins.tryEval (r.containerdRegistryPlugin 4)).success)
    ++ check "renderer refuses what TOML cannot hold" (!(builtins.tryEval (builtins.deepSeq (r.toTOML { z = (a: a); }) true)).success);

  hosts = r.hostsToml { mirrors = [ "http://10.0.0.1" "http://10.0.0.2" "http://10.0.0.3:8080" ]; };

  # What the module checks at build time for each VM test node (the sync node has an HMAC key).
  configs = builtins.mapAttrs (n: s: r.toTOML (r.checkableSettings s (nodeSecrets.${n} or { }))) nodes
    // { tricky = rendered; with-secrets = r.toTOML (r.checkableSettings { nodes.self = "10.0.0.1"; } secrets); };
}
